//! `kubectl-ramp`: see and steer rollouts from the terminal.

pub mod actions;
pub mod convert;
pub mod lint;
pub mod render;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};

use crate::api::duration::parse_duration;
use crate::api::{
    AnalysisRun, PLUGIN_FIELD_MANAGER, POD_TEMPLATE_HASH_LABEL, Rollout, RolloutPhase,
};
use actions::{Change, Refusal};

#[derive(Parser)]
#[command(name = "kubectl-ramp", version, about = "See and steer Ramp rollouts", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Path to the kubeconfig file.
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<String>,
    /// Kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace (default: the context's namespace).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Show a rollout, its revisions, ReplicaSets, pods and AnalysisRuns.
    Get {
        #[command(subcommand)]
        what: GetWhat,
    },
    /// List rollouts.
    List {
        #[command(subcommand)]
        what: ListWhat,
    },
    /// Wait for a rollout to finish; exit 0 when Healthy, 1 when Degraded or on timeout.
    Status {
        name: String,
        /// Keep watching until Healthy or Degraded (default); false prints once.
        #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
        /// Give up after this long, e.g. 5m (default: never).
        #[arg(short, long)]
        timeout: Option<String>,
        #[arg(short = 'o', long)]
        output: Option<Output>,
    },
    /// Continue past the current pause; --full skips all remaining steps and analysis.
    Promote {
        name: String,
        #[arg(long)]
        full: bool,
    },
    /// Stop the update and send all traffic and replicas back to stable.
    Abort { name: String },
    /// Run the steps of an aborted rollout again (`retry NAME` or `retry rollout NAME`).
    Retry { args: Vec<String> },
    /// Pause a rollout where it is.
    Pause { name: String },
    /// Resume a rollout paused with `pause`.
    Resume { name: String },
    /// Restart the rollout's pods, one at a time.
    Restart {
        name: String,
        /// Restart after this delay, e.g. 10m.
        #[arg(short = 'i', long = "in")]
        delay: Option<String>,
    },
    /// Roll back to an earlier pod template.
    Undo {
        name: String,
        /// Revision to go back to (default: the previous one).
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
    /// Change images: `set image NAME CONTAINER=IMAGE...` (`*` for every container).
    Set {
        #[command(subcommand)]
        what: SetWhat,
    },
    /// Check Rollout and AnalysisTemplate YAML offline with the controller's rules.
    Lint {
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Rewrite Argo Rollouts YAML (Rollout, AnalysisTemplate, ClusterAnalysisTemplate,
    /// AnalysisRun) for Ramp and report what Ramp does not support. The result goes to
    /// stdout (comments are not kept), the report to stderr; exit 1 when there is a report.
    Convert {
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Print the plugin version.
    Version,
    /// Print a shell completion script.
    Completion { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum GetWhat {
    /// A rollout by name.
    #[command(alias = "ro", alias = "rollouts")]
    Rollout {
        name: String,
        /// Redraw whenever the rollout or its objects change.
        #[arg(short, long)]
        watch: bool,
        #[arg(long)]
        no_color: bool,
        #[arg(short = 'o', long)]
        output: Option<Output>,
    },
    #[command(external_subcommand)]
    Other(Vec<String>),
}

#[derive(Subcommand)]
enum ListWhat {
    #[command(alias = "ro", alias = "rollout")]
    Rollouts {
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(long)]
        no_color: bool,
        #[arg(short = 'o', long)]
        output: Option<Output>,
    },
    #[command(external_subcommand)]
    Other(Vec<String>),
}

#[derive(Subcommand)]
enum SetWhat {
    Image {
        name: String,
        #[arg(required = true)]
        images: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Json,
    Yaml,
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error(
        "rollout {name:?} not found in namespace {namespace:?}; run `kubectl ramp list rollouts` (or `-A`) to see what exists"
    )]
    NotFound { name: String, namespace: String },
    #[error("cannot reach the cluster ({0}); check --kubeconfig and --context")]
    Unreachable(String),
    #[error(
        "Ramp is not installed on this cluster (no rollouts.ramp.dev CRD); install crds/ first"
    )]
    NotInstalled,
    #[error("{0}")]
    Usage(String),
    #[error("{action} failed: {source}")]
    Api { action: String, source: kube::Error },
    #[error("the rollout changed while this command ran; run it again")]
    Conflict,
    #[error("{0}")]
    Io(String),
    /// The command ran; the rollout is not where the caller wanted it.
    #[error("{0}")]
    Unhealthy(String),
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), PluginError> {
    match &cli.command {
        Command::Version => {
            println!("kubectl-ramp {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Command::Completion { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "kubectl-ramp",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        Command::Lint { file } => return run_lint(file),
        Command::Convert { file } => return run_convert(file),
        _ => {}
    }
    let (client, namespace) = connect(&cli).await?;
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &namespace);
    let fetch = |name: String| {
        let rollouts = rollouts.clone();
        let namespace = namespace.clone();
        async move { get_rollout(&rollouts, &name, &namespace).await }
    };
    match cli.command {
        Command::Get {
            what:
                GetWhat::Rollout {
                    name,
                    watch,
                    no_color,
                    output,
                },
        } => {
            let color = !no_color
                && std::env::var_os("NO_COLOR").is_none()
                && std::io::stdout().is_terminal();
            if let Some(format) = output {
                return print_data(&fetch(name).await?, format);
            }
            fetch(name.clone()).await?;
            if watch {
                watch_rollout(&client, &namespace, &name, color).await
            } else {
                print!("{}", draw(&client, &namespace, &name, color).await?);
                Ok(())
            }
        }
        Command::Get {
            what: GetWhat::Other(args),
        }
        | Command::List {
            what: ListWhat::Other(args),
        } => Err(PluginError::Usage(format!(
            "unknown resource kind {:?}; kubectl ramp works with rollouts (ro), e.g. `kubectl ramp get rollout NAME`",
            args.first().cloned().unwrap_or_default()
        ))),
        Command::List {
            what:
                ListWhat::Rollouts {
                    all_namespaces,
                    no_color,
                    output,
                },
        } => {
            let api: Api<Rollout> = if all_namespaces {
                Api::all(client.clone())
            } else {
                rollouts.clone()
            };
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| api_error("listing rollouts", e))?;
            let mut items = list.items;
            items.sort_by(|a, b| {
                (&a.metadata.namespace, &a.metadata.name)
                    .cmp(&(&b.metadata.namespace, &b.metadata.name))
            });
            if let Some(format) = output {
                return print_data(&items, format);
            }
            if items.is_empty() {
                println!(
                    "No rollouts found{}.",
                    if all_namespaces {
                        String::new()
                    } else {
                        format!(" in namespace {namespace}")
                    }
                );
                return Ok(());
            }
            let color = !no_color
                && std::env::var_os("NO_COLOR").is_none()
                && std::io::stdout().is_terminal();
            let refs: Vec<&Rollout> = items.iter().collect();
            print!("{}", render::render_list(&refs, all_namespaces, color));
            Ok(())
        }
        Command::Status {
            name,
            watch,
            timeout,
            output,
        } => {
            let timeout = timeout
                .map(|t| {
                    parse_duration(&t).map_err(|e| PluginError::Usage(format!("--timeout: {e}")))
                })
                .transpose()?;
            status(&rollouts, &namespace, &name, watch, timeout, output).await
        }
        Command::Promote { name, full } => {
            act(&rollouts, &namespace, &name, |r| actions::promote(r, full)).await
        }
        Command::Abort { name } => act(&rollouts, &namespace, &name, actions::abort).await,
        Command::Retry { args } => {
            let name = match args.as_slice() {
                [name] => name.clone(),
                [kind, name] if matches!(kind.as_str(), "rollout" | "ro" | "rollouts") => {
                    name.clone()
                }
                _ => {
                    return Err(PluginError::Usage(
                        "usage: kubectl ramp retry [rollout] NAME".into(),
                    ));
                }
            };
            act(&rollouts, &namespace, &name, actions::retry).await
        }
        Command::Pause { name } => act(&rollouts, &namespace, &name, actions::pause).await,
        Command::Resume { name } => act(&rollouts, &namespace, &name, actions::resume).await,
        Command::Restart { name, delay } => {
            let delay = delay
                .map(|d| parse_duration(&d).map_err(|e| PluginError::Usage(format!("--in: {e}"))))
                .transpose()?;
            let at = Timestamp::now()
                .checked_add(
                    SignedDuration::try_from(delay.unwrap_or_default()).unwrap_or_default(),
                )
                .map_err(|e| PluginError::Usage(format!("--in: {e}")))?;
            act(&rollouts, &namespace, &name, |r| actions::restart(r, at)).await
        }
        Command::Undo { name, to_revision } => {
            let rollout = fetch(name.clone()).await?;
            let sets = owned_replica_sets(&client, &namespace, &rollout).await?;
            if let Some(reference) = rollout.spec.workload_ref.clone() {
                return undo_workload(
                    &client,
                    &namespace,
                    &rollout,
                    &reference,
                    &sets,
                    to_revision,
                )
                .await;
            }
            act(&rollouts, &namespace, &name, |r| {
                actions::undo(r, &sets, to_revision)
            })
            .await
        }
        Command::Set {
            what: SetWhat::Image { name, images },
        } => {
            let pairs = actions::parse_image_specs(&images)?;
            act(&rollouts, &namespace, &name, |r| {
                actions::set_image(r, &pairs)
            })
            .await
        }
        Command::Version
        | Command::Completion { .. }
        | Command::Lint { .. }
        | Command::Convert { .. } => Ok(()),
    }
}

/// A file's text, or stdin's for `-`.
fn read_input(file: &str) -> Result<String, PluginError> {
    if file == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| PluginError::Io(format!("reading stdin: {e}")))
    } else {
        std::fs::read_to_string(file).map_err(|e| PluginError::Io(format!("reading {file}: {e}")))
    }
}

fn run_convert(file: &str) -> Result<(), PluginError> {
    let converted = convert::convert(&read_input(file)?)
        .map_err(|e| PluginError::Usage(format!("{file}: {e}")))?;
    print!("{}", converted.yaml);
    for finding in &converted.findings {
        eprintln!("{file}: {finding}");
    }
    if converted.converted == 0 {
        eprintln!(
            "{file}: no argoproj.io/v1alpha1 Rollout, AnalysisTemplate, ClusterAnalysisTemplate or AnalysisRun to convert"
        );
    }
    if converted.findings.is_empty() {
        Ok(())
    } else {
        Err(PluginError::Unhealthy(format!(
            "{} thing(s) in {file} Ramp does not support or accept; see above",
            converted.findings.len()
        )))
    }
}

fn run_lint(file: &str) -> Result<(), PluginError> {
    let text = read_input(file)?;
    let (findings, checked) = lint::lint(&text);
    for finding in &findings {
        println!("{file}: {finding}");
    }
    if findings.is_empty() {
        if checked == 0 {
            return Err(PluginError::Usage(format!(
                "{file} contains no ramp.dev/v1alpha1 Rollout or AnalysisTemplate"
            )));
        }
        println!("{file}: {checked} object(s) valid");
        Ok(())
    } else {
        Err(PluginError::Unhealthy(format!(
            "{} problem(s) in {file}",
            findings.len()
        )))
    }
}

async fn connect(cli: &Cli) -> Result<(Client, String), PluginError> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| PluginError::Unreachable(format!("reading kubeconfig {path}: {e}")))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| PluginError::Unreachable(e.to_string()))?
        }
        None => match Config::from_kubeconfig(&options).await {
            Ok(config) => config,
            Err(kubeconfig_error) => Config::incluster().map_err(|_| {
                PluginError::Unreachable(format!(
                    "no usable kubeconfig ({kubeconfig_error}) and not running in a cluster"
                ))
            })?,
        },
    };
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| PluginError::Unreachable(e.to_string()))?;
    client
        .apiserver_version()
        .await
        .map_err(|e| PluginError::Unreachable(format!("{server}: {e}")))?;
    Ok((client, namespace))
}

fn api_error(action: &str, source: kube::Error) -> PluginError {
    match &source {
        kube::Error::Api(status) if status.code == 409 => PluginError::Conflict,
        kube::Error::Api(status)
            if status.code == 404
                && status
                    .details
                    .as_ref()
                    .is_some_and(|d| d.kind == "rollouts")
                && action.contains("list") =>
        {
            PluginError::NotInstalled
        }
        _ => PluginError::Api {
            action: action.to_string(),
            source,
        },
    }
}

async fn get_rollout(
    api: &Api<Rollout>,
    name: &str,
    namespace: &str,
) -> Result<Rollout, PluginError> {
    match api.get_opt(name).await {
        Ok(Some(rollout)) => Ok(rollout),
        Ok(None) => Err(PluginError::NotFound {
            name: name.into(),
            namespace: namespace.into(),
        }),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(PluginError::NotInstalled),
        Err(error) => Err(api_error(&format!("reading rollout {name}"), error)),
    }
}

/// Decides with `decide`, then writes spec and status patches.
/// How many times a steering command re-reads the rollout and decides again
/// when the controller wrote in between (its status moves on every step).
const CONFLICT_ATTEMPTS: usize = 5;

/// Reads the rollout, decides, writes. A write carries the resourceVersion
/// the decision was based on, so a concurrent change is refused by the API
/// server; the command then decides again on what is there now instead of
/// failing, as kubectl's own retry-on-conflict does. Only the first write
/// can conflict: the status write after a spec write goes without a version.
async fn act(
    api: &Api<Rollout>,
    namespace: &str,
    name: &str,
    decide: impl Fn(&Rollout) -> Result<Change, Refusal>,
) -> Result<(), PluginError> {
    let mut attempt = 1;
    loop {
        let rollout = get_rollout(api, name, namespace).await?;
        match write_change(api, name, &decide(&rollout)?).await {
            Err(PluginError::Conflict) if attempt < CONFLICT_ATTEMPTS => attempt += 1,
            outcome => return outcome,
        }
    }
}

/// `undo` of a workloadRef Rollout: the chosen revision's template goes
/// into the referenced workload, whose change the controller then rolls out.
async fn undo_workload(
    client: &Client,
    namespace: &str,
    rollout: &Rollout,
    reference: &crate::api::WorkloadRef,
    sets: &[ReplicaSet],
    to_revision: i64,
) -> Result<(), PluginError> {
    let kind = reference.workload_kind().ok_or_else(|| {
        PluginError::Refused(Refusal(format!(
            "spec.workloadRef names {} {:?}, which Ramp cannot read a template from",
            reference.api_version, reference.kind
        )))
    })?;
    let target = actions::undo_target(rollout, sets, to_revision)?;
    let (group, version) = match kind.api_version().split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", kind.api_version()),
    };
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind.kind());
    let resource = kube::api::ApiResource::from_gvk(&gvk);
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &resource);
    let what = format!("{} {}", kind.kind(), reference.name);
    let current = api
        .get(&reference.name)
        .await
        .map_err(|e| api_error(&format!("reading {what}"), e))?;
    let current = serde_json::to_value(&current)
        .map_err(|e| PluginError::Io(format!("reading {what}: {e}")))?;
    let patch = actions::workload_template_patch(&current, &target.template)?;
    let params = PatchParams {
        field_manager: Some(PLUGIN_FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(&reference.name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| api_error(&format!("updating {what}"), e))?;
    println!(
        "rollout '{}' rolled back to revision {} ({what} updated)",
        rollout.metadata.name.clone().unwrap_or_default(),
        target.revision
    );
    Ok(())
}

async fn write_change(api: &Api<Rollout>, name: &str, change: &Change) -> Result<(), PluginError> {
    let params = PatchParams {
        field_manager: Some(PLUGIN_FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    if let Some(spec) = &change.spec {
        api.patch(name, &params, &Patch::Merge(spec))
            .await
            .map_err(|e| api_error(&format!("updating rollout {name}"), e))?;
    }
    if let Some(status) = &change.status {
        let mut status = status.clone();
        if change.spec.is_some() {
            // The spec write moved the resourceVersion; status fields are checked by the controller anyway.
            status["metadata"] = serde_json::json!({});
        }
        api.patch_status(name, &params, &Patch::Merge(&status))
            .await
            .map_err(|e| api_error(&format!("updating status of rollout {name}"), e))?;
    }
    println!("{}", change.summary);
    Ok(())
}

fn print_data<T: serde::Serialize>(data: &T, format: Output) -> Result<(), PluginError> {
    let text = match format {
        Output::Json => {
            serde_json::to_string_pretty(data).map_err(|e| PluginError::Io(e.to_string()))? + "\n"
        }
        Output::Yaml => serde_yaml::to_string(data).map_err(|e| PluginError::Io(e.to_string()))?,
    };
    print!("{text}");
    Ok(())
}

async fn owned_replica_sets(
    client: &Client,
    namespace: &str,
    rollout: &Rollout,
) -> Result<Vec<ReplicaSet>, PluginError> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let uid = rollout.metadata.uid.clone().unwrap_or_default();
    let list = api
        .list(&ListParams::default().labels(POD_TEMPLATE_HASH_LABEL))
        .await
        .map_err(|e| api_error("listing ReplicaSets", e))?;
    Ok(list
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid)
        })
        .collect())
}

async fn draw(
    client: &Client,
    namespace: &str,
    name: &str,
    color: bool,
) -> Result<String, PluginError> {
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), namespace);
    let rollout = get_rollout(&rollouts, name, namespace).await?;
    let sets = owned_replica_sets(client, namespace, &rollout).await?;
    let hashes: Vec<String> = sets
        .iter()
        .filter_map(|rs| {
            rs.metadata
                .labels
                .as_ref()?
                .get(POD_TEMPLATE_HASH_LABEL)
                .cloned()
        })
        .collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = if hashes.is_empty() {
        Vec::new()
    } else {
        let selector = format!("{POD_TEMPLATE_HASH_LABEL} in ({})", hashes.join(","));
        pods.list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_error("listing pods", e))?
            .items
    };
    let runs: Api<AnalysisRun> = Api::namespaced(client.clone(), namespace);
    let uid = rollout.metadata.uid.clone().unwrap_or_default();
    let runs: Vec<AnalysisRun> = runs
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error("listing AnalysisRuns", e))?
        .items
        .into_iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid)
        })
        .collect();
    let view = render::View {
        rollout: &rollout,
        replica_sets: sets.iter().collect(),
        pods: pods.iter().collect(),
        runs: runs.iter().collect(),
        now: Timestamp::now(),
        color,
    };
    Ok(render::render_rollout(&view))
}

/// Redraws when the rollout, its ReplicaSets, pods or runs change, at most every 200 ms.
async fn watch_rollout(
    client: &Client,
    namespace: &str,
    name: &str,
    color: bool,
) -> Result<(), PluginError> {
    let config = watcher::Config::default();
    let rollouts = watcher(
        Api::<Rollout>::namespaced(client.clone(), namespace),
        config.clone().fields(&format!("metadata.name={name}")),
    )
    .touched_objects()
    .map_ok(|_| ())
    .boxed();
    let sets = watcher(
        Api::<ReplicaSet>::namespaced(client.clone(), namespace),
        config.clone().labels(POD_TEMPLATE_HASH_LABEL),
    )
    .touched_objects()
    .map_ok(|_| ())
    .boxed();
    let pods = watcher(
        Api::<Pod>::namespaced(client.clone(), namespace),
        config.clone().labels(POD_TEMPLATE_HASH_LABEL),
    )
    .touched_objects()
    .map_ok(|_| ())
    .boxed();
    let runs = watcher(
        Api::<AnalysisRun>::namespaced(client.clone(), namespace),
        config,
    )
    .touched_objects()
    .map_ok(|_| ())
    .boxed();
    let mut changes = futures::stream::select_all([rollouts, sets, pods, runs]);
    let mut stdout = std::io::stdout();
    loop {
        let frame = draw(client, namespace, name, color).await?;
        let _ = write!(stdout, "\x1b[H\x1b[2J{frame}");
        let _ = stdout.flush();
        tokio::select! {
            next = changes.next() => if next.is_none() { return Ok(()); },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Fold everything that arrived meanwhile into one redraw.
        while let Some(Some(_)) = futures::FutureExt::now_or_never(changes.next()) {}
    }
}

async fn status(
    api: &Api<Rollout>,
    namespace: &str,
    name: &str,
    watch: bool,
    timeout: Option<Duration>,
    output: Option<Output>,
) -> Result<(), PluginError> {
    let describe = |rollout: &Rollout| -> (Option<RolloutPhase>, String) {
        let status = rollout.status.clone().unwrap_or_default();
        if status.observed_generation != rollout.metadata.generation {
            return (
                Some(RolloutPhase::Progressing),
                "waiting for the controller to observe the new spec".into(),
            );
        }
        (status.phase, status.message.unwrap_or_default())
    };
    let rollout = get_rollout(api, name, namespace).await?;
    if let Some(format) = output {
        return print_data(&rollout.status, format);
    }
    let verdict = |phase: Option<RolloutPhase>, message: &str| -> Option<Result<(), PluginError>> {
        match phase {
            Some(RolloutPhase::Healthy) => Some(Ok(())),
            Some(RolloutPhase::Degraded) => Some(Err(PluginError::Unhealthy(format!(
                "rollout '{name}' is Degraded: {message}"
            )))),
            _ => None,
        }
    };
    let (phase, message) = describe(&rollout);
    let line = |phase: Option<RolloutPhase>, message: &str| {
        let word = render::phase_label(phase).1;
        if message.is_empty() {
            word.to_string()
        } else {
            format!("{word} - {message}")
        }
    };
    println!("{}", line(phase, &message));
    if let Some(done) = verdict(phase, &message) {
        return done;
    }
    if !watch {
        return Ok(());
    }
    let mut last = (phase, message);
    let stream = watcher(
        api.clone(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .applied_objects();
    let follow = async {
        futures::pin_mut!(stream);
        while let Some(rollout) = stream
            .try_next()
            .await
            .map_err(|e| PluginError::Unreachable(e.to_string()))?
        {
            let now = describe(&rollout);
            if now != last {
                println!("{}", line(now.0, &now.1));
                last = now.clone();
            }
            if let Some(done) = verdict(now.0, &now.1) {
                return done;
            }
        }
        Err(PluginError::Unreachable("the watch ended".into()))
    };
    match timeout {
        Some(limit) => tokio::time::timeout(limit, follow)
            .await
            .unwrap_or_else(|_| {
                Err(PluginError::Unhealthy(format!(
                    "rollout '{name}' did not become Healthy within {limit:?}"
                )))
            }),
        None => follow.await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;

    /// What the fake API server saw: method, path and, for writes, the resourceVersion sent.
    type Seen = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

    fn rollout_at(version: u32, aborted: bool) -> Value {
        json!({
            "apiVersion": "ramp.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "web", "namespace": "ns", "resourceVersion": version.to_string()},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {}, "strategy": {"canary": {}}},
            "status": {"currentPodHash": "new", "stableRS": "old", "abort": aborted}
        })
    }

    /// A fake API server: GETs return the rollout at the next version, and the
    /// first `conflicts` status writes are refused with 409 Conflict.
    fn client(conflicts: usize, aborted_after_first_read: bool, seen: Seen) -> Client {
        let reads = Arc::new(Mutex::new(0u32));
        let writes = Arc::new(Mutex::new(0usize));
        let service = tower::service_fn(move |request: http::Request<Body>| {
            let (seen, reads, writes) = (seen.clone(), reads.clone(), writes.clone());
            async move {
                let method = request.method().to_string();
                let path = request.uri().path().to_string();
                let body = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let version = sent["metadata"]["resourceVersion"]
                    .as_str()
                    .map(String::from);
                seen.lock().unwrap().push((method.clone(), path, version));
                let (code, answer) = if method == "GET" {
                    let mut reads = reads.lock().unwrap();
                    *reads += 1;
                    let aborted = aborted_after_first_read && *reads > 1;
                    (200, rollout_at(*reads, aborted))
                } else {
                    let mut writes = writes.lock().unwrap();
                    *writes += 1;
                    if *writes <= conflicts {
                        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "Conflict", "code": 409,
                            "message": "the object has been modified; please apply your changes to the latest version"});
                        (409, status)
                    } else {
                        (200, rollout_at(100, true))
                    }
                };
                let response = http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        Client::new(service, "ns")
    }

    fn writes_sent(seen: &Seen) -> Vec<Option<String>> {
        let seen = seen.lock().unwrap();
        seen.iter()
            .filter(|(method, _, _)| method == "PATCH")
            .map(|(_, _, version)| version.clone())
            .collect()
    }

    #[tokio::test]
    async fn a_conflict_reads_the_rollout_again_and_writes_on_the_new_version() {
        let seen = Seen::default();
        let api: Api<Rollout> = Api::namespaced(client(2, false, seen.clone()), "ns");
        act(&api, "ns", "web", actions::abort).await.unwrap();
        assert_eq!(
            writes_sent(&seen),
            vec![Some("1".into()), Some("2".into()), Some("3".into())],
            "each write carries the version of the read just before it"
        );
        let paths: Vec<String> = seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
        assert!(
            paths
                .iter()
                .all(|p| p.starts_with("/apis/ramp.dev/v1alpha1/namespaces/ns/rollouts/web")),
            "{paths:?}"
        );
    }

    #[tokio::test]
    async fn after_a_conflict_the_decision_is_made_again_on_what_is_there_now() {
        let seen = Seen::default();
        let api: Api<Rollout> = Api::namespaced(client(1, true, seen.clone()), "ns");
        let error = act(&api, "ns", "web", actions::abort).await.unwrap_err();
        assert!(
            error.to_string().contains("already aborted"),
            "the second read shows the abort someone else made: {error}"
        );
        assert_eq!(writes_sent(&seen), vec![Some("1".into())]);
    }

    #[tokio::test]
    async fn a_rollout_that_keeps_changing_gives_up_with_a_message() {
        let seen = Seen::default();
        let api: Api<Rollout> = Api::namespaced(client(usize::MAX, false, seen.clone()), "ns");
        let error = act(&api, "ns", "web", actions::abort).await.unwrap_err();
        assert!(matches!(error, PluginError::Conflict), "{error}");
        assert_eq!(writes_sent(&seen).len(), CONFLICT_ATTEMPTS);
    }
}
