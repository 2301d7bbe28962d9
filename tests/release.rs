//! What `make release` (scripts/release.sh) leaves in target/dist/: static
//! binaries, the controller's OCI image, the packaged chart and checksums.
//! The image is pushed to a registry crane serves on loopback, inspected
//! there and pulled back. `make test` runs `make release` first.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use ramp_test_support::{free_port, repo_root};
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const UID: &str = "65532";

fn dist() -> anyhow::Result<PathBuf> {
    let dist = repo_root().join("target/dist");
    anyhow::ensure!(
        dist.join("SHA256SUMS").exists(),
        "{} has no release; run `make release` (make test does)",
        dist.display()
    );
    Ok(dist)
}

fn tool(name: &str) -> PathBuf {
    repo_root().join("target/cluster/bin").join(name)
}

/// Runs a command; its stdout, or an error with what it printed.
fn run(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .env("HELM_CACHE_HOME", repo_root().join("target/helm/cache"))
        .env("HELM_CONFIG_HOME", repo_root().join("target/helm/config"))
        .env("HELM_DATA_HOME", repo_root().join("target/helm/data"))
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "{} {args:?} exited {:?}: {}{}",
            program.display(),
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// True when the ELF file asks for a program interpreter (a dynamic loader).
fn has_interpreter(bytes: &[u8]) -> anyhow::Result<bool> {
    anyhow::ensure!(
        bytes.len() > 64 && &bytes[..4] == b"\x7fELF",
        "not an ELF file"
    );
    anyhow::ensure!(
        bytes[4] == 2 && bytes[5] == 1,
        "not a 64-bit little-endian ELF"
    );
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&bytes[0x20..0x28]);
    let table = u64::from_le_bytes(offset) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    Ok((0..count).any(|i| {
        let at = table + i * size;
        bytes
            .get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == PT_INTERP)
    }))
}

#[test]
fn binaries_are_static_and_run() -> anyhow::Result<()> {
    let dist = dist()?;
    for binary in ["ramp-controller", "kubectl-ramp"] {
        let bytes = std::fs::read(dist.join(binary))?;
        assert!(!has_interpreter(&bytes)?, "{binary} needs a dynamic loader");
    }
    let version = run(&dist.join("kubectl-ramp"), &["version"])?;
    assert!(version.contains(VERSION), "{version}");
    run(&dist.join("ramp-controller"), &["--help"])?;
    // The checksums cover every artifact, and hold.
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS"))?;
    let listed: Vec<&str> = sums
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    for artifact in [
        "ramp-controller",
        "kubectl-ramp",
        "ramp-controller-image.tar",
        "IMAGE",
        &format!("ramp-{VERSION}.tgz"),
    ] {
        assert!(
            listed.contains(&artifact),
            "{artifact} missing from {listed:?}"
        );
    }
    let checked = Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&dist)
        .output()?;
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    Ok(())
}

#[test]
fn manifests_and_chart_name_the_released_image() -> anyhow::Result<()> {
    let dist = dist()?;
    let image = std::fs::read_to_string(dist.join("IMAGE"))?
        .trim()
        .to_string();
    assert_eq!(image, format!("ghcr.io/ramp-dev/ramp-controller:{VERSION}"));
    let kustomize = std::fs::read_to_string(repo_root().join("deploy/base/deployment.yaml"))?;
    assert!(
        kustomize.contains(&format!("image: {image}")),
        "deploy/base names another image"
    );
    let chart = std::fs::read_to_string(repo_root().join("deploy/helm/ramp/Chart.yaml"))?;
    assert!(
        chart.contains(&format!("\nversion: {VERSION}\n")),
        "chart version is not {VERSION}"
    );
    assert!(
        chart.contains(&format!("\nappVersion: \"{VERSION}\"\n")),
        "appVersion is not {VERSION}"
    );
    // The packaged chart renders the same reference.
    let packaged = dist.join(format!("ramp-{VERSION}.tgz"));
    let packaged = packaged.display().to_string();
    let shown = run(&tool("helm"), &["show", "chart", &packaged])?;
    assert!(shown.contains(&format!("version: {VERSION}")), "{shown}");
    let rendered = run(&tool("helm"), &["template", "ramp", &packaged])?;
    assert!(
        rendered.contains(&format!("image: {image}")),
        "the packaged chart names another image"
    );
    Ok(())
}

/// A registry on loopback for one test, stopped when dropped.
struct Registry {
    child: std::process::Child,
    address: String,
}

impl Registry {
    fn start() -> anyhow::Result<Registry> {
        let address = format!("127.0.0.1:{}", free_port()?);
        let child = Command::new(tool("crane"))
            .args(["registry", "serve", "--address", &address])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting crane registry serve")?;
        let registry = Registry { child, address };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(&registry.address).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "registry did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(registry)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn image_is_non_root_with_the_binary_as_entrypoint_and_survives_a_registry() -> anyhow::Result<()> {
    let dist = dist()?;
    let crane = tool("crane");
    let tarball = dist.join("ramp-controller-image.tar").display().to_string();
    let registry = Registry::start()?;
    let reference = format!("{}/ramp-dev/ramp-controller:{VERSION}", registry.address);
    run(&crane, &["push", "--insecure", &tarball, &reference])?;

    let config: Value = serde_json::from_str(&run(&crane, &["config", "--insecure", &reference])?)?;
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["config"]["User"], format!("{UID}:{UID}"));
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/ramp-controller"])
    );
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.version"],
        VERSION
    );
    let manifest: Value =
        serde_json::from_str(&run(&crane, &["manifest", "--insecure", &reference])?)?;
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    assert_eq!(layers.len(), 1, "one layer, the binary: {manifest}");

    // The layer holds the released binary only, owned by the non-root user.
    let exported = tempfile::NamedTempFile::new()?;
    let exported_path = exported.path().display().to_string();
    run(
        &crane,
        &["export", "--insecure", &reference, &exported_path],
    )?;
    let listing = run(
        Path::new("tar"),
        &[
            "--list",
            "--verbose",
            "--numeric-owner",
            "--file",
            &exported_path,
        ],
    )?;
    let entries: Vec<&str> = listing.lines().collect();
    assert_eq!(entries.len(), 1, "{listing}");
    assert!(
        entries[0].starts_with(&format!("-rwxr-xr-x {UID}/{UID} "))
            && entries[0].ends_with(" ramp-controller"),
        "{listing}"
    );
    let unpacked = tempfile::tempdir()?;
    run(
        Path::new("tar"),
        &[
            "--extract",
            "--file",
            &exported_path,
            "--directory",
            &unpacked.path().display().to_string(),
        ],
    )?;
    assert!(
        std::fs::read(unpacked.path().join("ramp-controller"))?
            == std::fs::read(dist.join("ramp-controller"))?,
        "the image runs the released binary"
    );

    // Pulled back, it is the same image.
    let pulled = tempfile::NamedTempFile::new()?;
    let pulled_path = pulled.path().display().to_string();
    run(&crane, &["pull", "--insecure", &reference, &pulled_path])?;
    let remote = run(&crane, &["digest", "--insecure", &reference])?;
    let original = run(&crane, &["digest", "--tarball", &tarball])?;
    let back = run(&crane, &["digest", "--tarball", &pulled_path])?;
    assert_eq!(remote.trim(), original.trim());
    assert_eq!(back.trim(), original.trim());
    Ok(())
}
