//! The kubectl plugin: `kubectl ramp ...` runs this binary.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    ramp::plugin::main().await
}
