//! The Ramp controller binary.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use ramp::analysis::policy::{AddressAllowList, AnalysisPolicy};
use ramp::controller::shard::Shard;
use ramp::controller::{self, Settings};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "ramp-controller",
    version,
    about = "Progressive delivery controller for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Kubeconfig to use; defaults to $KUBECONFIG, ~/.kube/config, then in-cluster config.
    #[arg(long, env = "KUBECONFIG", global = true)]
    kubeconfig: Option<String>,
    /// Watch only this namespace (needs only namespaced RBAC); default: all namespaces.
    #[arg(long, env = "RAMP_NAMESPACE")]
    namespace: Option<String>,
    /// Log level filter, e.g. info or ramp=debug,kube=info.
    #[arg(long, env = "RAMP_LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[arg(long, env = "RAMP_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "RAMP_HTTP_ADDRESS", default_value = "0.0.0.0:8080")]
    http_address: String,
    /// Leader election through a coordination.k8s.io Lease (on by default).
    #[arg(long, env = "RAMP_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    #[arg(long, env = "RAMP_LEASE_NAME", default_value = "ramp-controller")]
    lease_name: String,
    /// Namespace of the Lease; defaults to $POD_NAMESPACE, then the watched namespace, then "default".
    #[arg(long, env = "RAMP_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Seconds a lease stays valid without renewal (takeover time after a crash).
    #[arg(long, env = "RAMP_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Rollouts reconciled at the same time (each one is never reconciled twice at once).
    #[arg(long, env = "RAMP_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Seconds between looks for route CRDs (Gateway API, Istio) installed
    /// after the controller started.
    #[arg(long, env = "RAMP_ROUTE_DISCOVERY_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    route_discovery_seconds: u64,
    /// Client-side limit on requests per second to the API server; 0 turns it off.
    /// Events are paced by a second limit of the same size, so they never delay rollout writes.
    #[arg(long, env = "RAMP_KUBE_API_QPS", default_value_t = 200.0)]
    kube_api_qps: f64,
    /// Requests allowed at once above --kube-api-qps before the limit paces them.
    #[arg(long, env = "RAMP_KUBE_API_BURST", default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..))]
    kube_api_burst: u32,
    /// Metric provider addresses analysis may call, comma-separated or repeated:
    /// `host`, `host:port`, `https://host:port` or `*.domain`. Empty allows any address.
    #[arg(long, env = "RAMP_METRIC_ADDRESS_ALLOW", value_delimiter = ',')]
    metric_address_allow: Vec<String>,
    /// Let runs built from ClusterAnalysisTemplates read Secrets (in the run's namespace).
    /// Off by default: a cluster-wide template would read the Secrets of every namespace using it.
    #[arg(long, env = "RAMP_ALLOW_CLUSTER_TEMPLATE_SECRETS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    allow_cluster_template_secrets: bool,
    /// Split Rollouts across this many controller processes by a stable hash of namespace/name.
    #[arg(long, env = "RAMP_SHARDS", default_value_t = 1)]
    shards: u32,
    /// Which share this process reconciles, 0 to --shards - 1. With leader election,
    /// each shard has its own Lease (`<lease-name>-shard-<index>`), so replicas of one
    /// shard take over from each other.
    #[arg(long, env = "RAMP_SHARD_INDEX", default_value_t = 0)]
    shard_index: u32,
    /// Identity in the Lease; defaults to $POD_NAME, then the hostname and process id.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD.
    Crds {
        /// Write `<name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Crds { out_dir }) = &cli.command {
        return match write_crds(out_dir.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let filter = match EnvFilter::try_new(&cli.log_level) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!(
                "error: --log-level {:?} is not a valid filter ({error}); use e.g. info or ramp=debug",
                cli.log_level
            );
            return ExitCode::from(2);
        }
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let metrics = std::sync::Arc::new(ramp::controller::metrics::Metrics::default());
    if !cli.kube_api_qps.is_finite() || cli.kube_api_qps < 0.0 {
        eprintln!(
            "error: --kube-api-qps {} must be a number of requests per second, 0 or more (0 turns the limit off)",
            cli.kube_api_qps
        );
        return ExitCode::from(2);
    }
    let allowed_addresses = match AddressAllowList::parse(&cli.metric_address_allow) {
        Ok(allowed) => allowed,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let shard = match Shard::new(cli.shards, cli.shard_index) {
        Ok(shard) => shard,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let analysis_policy = AnalysisPolicy {
        allowed_addresses,
        cluster_templates_read_secrets: cli.allow_cluster_template_secrets,
    };
    let limit = controller::client::RateLimit {
        qps: cli.kube_api_qps,
        burst: cli.kube_api_burst,
    };
    let clients = async {
        Ok::<_, String>(controller::Clients {
            api: client(cli.kubeconfig.as_deref(), metrics.clone(), limit).await?,
            events: client(cli.kubeconfig.as_deref(), metrics.clone(), limit).await?,
        })
    };
    let clients = match clients.await {
        Ok(clients) => clients,
        Err(error) => {
            tracing::error!("cannot build a Kubernetes client: {error}");
            return ExitCode::FAILURE;
        }
    };
    let identity = cli.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease_namespace = cli
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .or_else(|| cli.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let settings = Settings {
        namespace: cli.namespace.clone(),
        leader_election: cli.leader_elect,
        lease_namespace,
        lease_name: if shard.count() > 1 {
            format!("{}-shard-{}", cli.lease_name, shard.index())
        } else {
            cli.lease_name.clone()
        },
        identity,
        lease_duration: Duration::from_secs(cli.lease_duration_seconds),
        http_address: cli.http_address.clone(),
        concurrency: cli.concurrency,
        route_discovery_interval: Duration::from_secs(cli.route_discovery_seconds),
        analysis_policy,
        shard,
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), namespace = ?settings.namespace, leader_election = settings.leader_election, shard = settings.shard.index(), shards = settings.shard.count(), metric_address_allow = %settings.analysis_policy.allowed_addresses.as_ref().map(|a| a.to_string()).unwrap_or_else(|| "any".into()), cluster_templates_read_secrets = settings.analysis_policy.cluster_templates_read_secrets, "starting ramp-controller");
    match controller::run(clients, settings, metrics).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn write_crds(out_dir: Option<&std::path::Path>) -> Result<(), String> {
    let Some(dir) = out_dir else {
        print!(
            "{}",
            ramp::api::crd_yaml().map_err(|e| format!("rendering CRDs: {e}"))?
        );
        return Ok(());
    };
    for crd in ramp::api::crds() {
        let path = dir.join(ramp::api::crd_file_name(&crd));
        let yaml = ramp::api::crd_document(&crd)
            .map_err(|e| format!("rendering {}: {e}", path.display()))?;
        std::fs::write(&path, yaml).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

async fn client(
    kubeconfig: Option<&str>,
    metrics: std::sync::Arc<ramp::controller::metrics::Metrics>,
    limit: controller::client::RateLimit,
) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| format!("reading kubeconfig {path}: {e}"))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {path}: {e}"))?
        }
        None => Config::infer().await.map_err(|e| e.to_string())?,
    };
    controller::client::build(config, metrics, Some(limit)).map_err(|e| e.to_string())
}
