//! A real Prometheus scraping an error-ratio series the test sets, and the
//! AnalysisTemplate that queries it.

use std::time::Duration;

use ramp_test_support::{MetricsTarget, Prometheus, wait_until};

/// A rollout's analysis reference to the `errors` template for service web.
pub const ERRORS_ANALYSIS: &str =
    "{templates: [{templateName: errors}], args: [{name: service, value: web}]}";

pub const SERIES: &str = "app_errors_ratio{service=\"web\"}";

pub struct Metrics {
    pub target: MetricsTarget,
    pub prometheus: Prometheus,
}

impl Metrics {
    pub async fn start(initial: f64) -> anyhow::Result<Metrics> {
        let target = MetricsTarget::start().await?;
        target.set(SERIES, initial);
        let prometheus = Prometheus::start(&[target.addr]).await?;
        let metrics = Metrics { target, prometheus };
        metrics.expect(initial).await?;
        Ok(metrics)
    }

    /// Sets the ratio and waits until Prometheus has scraped it.
    pub async fn set(&self, value: f64) -> anyhow::Result<()> {
        self.target.set(SERIES, value);
        self.expect(value).await
    }

    pub async fn expect(&self, value: f64) -> anyhow::Result<()> {
        wait_until(
            &format!("Prometheus to see {value}"),
            Duration::from_secs(30),
            || async {
                let result = self.prometheus.query(SERIES).await?;
                Ok((ramp_test_support::scalar(&result) == Some(value)).then_some(()))
            },
        )
        .await
    }
}

/// An error-ratio template pointed at this test's Prometheus.
pub fn template(name: &str, prometheus: &str, extra: &str, condition: &str) -> String {
    format!(
        r#"
apiVersion: ramp.dev/v1alpha1
kind: AnalysisTemplate
metadata: {{name: {name}}}
spec:
  args: [{{name: service}}]
  metrics:
  - name: error-ratio
    interval: 1s
    successCondition: "{condition}"
    {extra}
    provider:
      prometheus:
        address: {prometheus}
        query: sum(app_errors_ratio{{service="{{{{args.service}}}}"}})
"#
    )
}
