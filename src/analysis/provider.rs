//! One trait for every metric provider. The run controller resolves the
//! arguments (Secrets included) and hands each measurement to the provider
//! the metric names; a new provider is a new file plus one line in
//! `provider_of`, never a change to the run loop.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;

use super::condition::MetricValue;
use super::policy::AddressAllowList;
use super::{job, prometheus, web};
use crate::api::{AnalysisPhase, AnalysisRun, Measurement, Metric, PrometheusMetric, WebMetric};

/// What a provider gets for one measurement.
pub struct Measure<'a> {
    pub http: &'a reqwest::Client,
    pub insecure_http: &'a reqwest::Client,
    /// For providers that create Kubernetes objects (the job provider).
    pub client: &'a kube::Client,
    pub run: &'a AnalysisRun,
    pub metric: &'a Metric,
    /// Every argument with its value, Secrets already read.
    pub args: &'a BTreeMap<String, String>,
    /// The operator's allow-list; every address a provider calls is checked.
    pub allowed: Option<&'a AddressAllowList>,
    /// Credentials read from Secrets for the provider (Prometheus authentication).
    pub auth_headers: Vec<(String, String)>,
}

/// What a provider found out.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// A value for the metric's conditions to judge.
    Value(MetricValue),
    /// The provider judged the measurement itself (a Job completed or failed).
    Judged {
        phase: AnalysisPhase,
        message: Option<String>,
    },
    /// Still in flight: look again after `resume_in`; `metadata` is what the
    /// provider needs to find it (kept in the measurement's status).
    InFlight {
        metadata: BTreeMap<String, String>,
        resume_in: Duration,
    },
}

/// A provider's report: what it asked (for status) and what it got.
pub struct Answer {
    pub asked: Option<String>,
    pub value: Result<Reading, String>,
}

impl Answer {
    pub(crate) fn refused(message: String) -> Answer {
        Answer {
            asked: None,
            value: Err(message),
        }
    }
}

/// A metric provider. Value providers (Prometheus, web) answer in `run`;
/// providers whose measurements take time (a Job) return `InFlight` and are
/// asked again through `resume` until they judge, `terminate` when the run
/// stops first, and `garbage_collect` to keep only the newest objects.
pub trait Provider: Send + Sync {
    fn run<'a>(&'a self, input: Measure<'a>) -> BoxFuture<'a, Answer>;

    fn resume<'a>(
        &'a self,
        _input: Measure<'a>,
        _in_flight: &'a Measurement,
    ) -> BoxFuture<'a, Answer> {
        Box::pin(async {
            Answer::refused("this provider has no measurements in flight to resume".into())
        })
    }

    /// Stops an in-flight measurement; Ok is the measurement's end (Argo
    /// reports a terminated measurement Inconclusive).
    fn terminate<'a>(
        &'a self,
        _input: Measure<'a>,
        _in_flight: &'a Measurement,
    ) -> BoxFuture<'a, Answer> {
        Box::pin(async {
            Answer {
                asked: None,
                value: Ok(Reading::Judged {
                    phase: AnalysisPhase::Inconclusive,
                    message: Some(TERMINATED.into()),
                }),
            }
        })
    }

    /// Deletes what the metric's measurements left behind beyond the newest `keep`.
    fn garbage_collect<'a>(
        &'a self,
        _input: Measure<'a>,
        _keep: usize,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// The providers Ramp implements, by their field under `provider`.
pub const IMPLEMENTED: [&str; 3] = ["prometheus", "web", "job"];

/// The message of a measurement stopped because its run was terminated.
pub const TERMINATED: &str = "Metric Terminated";

/// The provider a metric names, or why there is none.
pub fn provider_of(metric: &Metric) -> Result<Box<dyn Provider + '_>, String> {
    if let Some(config) = &metric.provider.prometheus {
        return Ok(Box::new(Prometheus(config)));
    }
    if let Some(config) = &metric.provider.web {
        return Ok(Box::new(Web(config)));
    }
    if let Some(config) = &metric.provider.job {
        return Ok(Box::new(job::JobProvider(config)));
    }
    Err(format!(
        "metric {:?} names no provider Ramp implements (prometheus, web, job)",
        metric.name
    ))
}

fn allowed(list: Option<&AddressAllowList>, address: &str) -> Result<(), String> {
    list.map_or(Ok(()), |list| list.check(address))
}

struct Prometheus<'a>(&'a PrometheusMetric);

impl Prometheus<'_> {
    fn request(&self, input: &Measure<'_>) -> Result<prometheus::Request, String> {
        let config = self.0;
        let address = config
            .address
            .clone()
            .filter(|a| !a.trim().is_empty())
            .or_else(|| std::env::var(prometheus::ADDRESS_ENV).ok())
            .ok_or_else(|| {
                format!(
                    "no Prometheus address: set provider.prometheus.address or the controller's {}",
                    prometheus::ADDRESS_ENV
                )
            })?;
        let address = prometheus::substitute(&address, input.args)?;
        allowed(input.allowed, &address)?;
        let mut headers = config
            .headers
            .iter()
            .map(|h| Ok((h.key.clone(), prometheus::substitute(&h.value, input.args)?)))
            .collect::<Result<Vec<_>, String>>()?;
        headers.extend(input.auth_headers.iter().cloned());
        let timeout = match config.timeout {
            Some(seconds) if seconds > 0 => Duration::from_secs(seconds as u64),
            _ => prometheus::DEFAULT_TIMEOUT,
        };
        Ok(prometheus::Request {
            address,
            query: prometheus::substitute(&config.query, input.args)?,
            timeout,
            headers,
            insecure: config.insecure.unwrap_or(false),
            range: config
                .range_query
                .as_ref()
                .map(|r| prometheus::Range::resolve(r, input.args, jiff::Timestamp::now()))
                .transpose()?,
        })
    }
}

impl Provider for Prometheus<'_> {
    fn run<'a>(&'a self, input: Measure<'a>) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let request = match self.request(&input) {
                Ok(request) => request,
                Err(message) => return Answer::refused(message),
            };
            let value = prometheus::query(input.http, input.insecure_http, &request).await;
            Answer {
                asked: Some(request.query),
                value: value.map(Reading::Value),
            }
        })
    }
}

struct Web<'a>(&'a WebMetric);

impl Provider for Web<'_> {
    fn run<'a>(&'a self, input: Measure<'a>) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let request = match web::prepare(self.0, input.args) {
                Ok(request) => request,
                Err(message) => return Answer::refused(message),
            };
            let token_url = request.oauth2.as_ref().map(|c| c.token_url.as_str());
            for address in std::iter::once(request.url.as_str()).chain(token_url) {
                if let Err(message) = allowed(input.allowed, address) {
                    return Answer::refused(message);
                }
            }
            let value = web::measure(input.http, input.insecure_http, &request).await;
            Answer {
                asked: Some(format!("{} {}", request.method, request.url)),
                value: value.map(Reading::Value),
            }
        })
    }
}
