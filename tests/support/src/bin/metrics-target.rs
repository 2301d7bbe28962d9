//! A metrics endpoint whose values are set over HTTP, for the demo and manual
//! testing: `POST /set?series=NAME{labels}&value=N`, scraped at `/metrics`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let target = ramp_test_support::MetricsTarget::start_on(&address).await?;
    println!("{}", target.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
