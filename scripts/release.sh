#!/usr/bin/env bash
# `make release`: everything a release ships, under target/dist/:
#   ramp-controller, kubectl-ramp   static (musl) binaries for linux/amd64
#   ramp-controller-image.tar       the controller's OCI image (one layer, the
#                                   binary; non-root; the binary as entrypoint),
#                                   tagged ghcr.io/ramp-dev/ramp-controller:<version>
#   IMAGE                           that reference, as the manifests name it
#   ramp-<version>.tgz              the packaged Helm chart
#   SHA256SUMS                      checksums of all of the above
# The version is Cargo.toml's. No Docker engine: crane (built from its Go
# module by tests/cluster/build.sh) assembles the image through a registry
# it serves on loopback for the length of this script.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin="$root/target/cluster/bin"
target=x86_64-unknown-linux-musl
dist="$root/target/dist"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
repository=ghcr.io/ramp-dev/ramp-controller
image="$repository:$version"
uid=65532

for tool in crane helm; do
  [[ -x "$bin/$tool" ]] || { echo "$bin/$tool is missing; run make deps (it builds $tool from its Go module)" >&2; exit 1; }
done
command -v musl-gcc >/dev/null || { echo "musl-gcc is missing; make deps installs Debian's musl-tools" >&2; exit 1; }
if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi

echo "building static binaries ($target, version $version)" >&2
cargo build --release --locked --target "$target" --bin ramp-controller --bin kubectl-ramp
rm -rf "$dist"
mkdir -p "$dist"
for binary in ramp-controller kubectl-ramp; do
  # Debug info stays in target/ (the release profile keeps line tables for
  # backtraces during development); what ships is stripped.
  strip --strip-debug --output-file "$dist/$binary" "target/$target/release/$binary"
  # A dynamic executable would need a libc the image does not have.
  if readelf --program-headers "$dist/$binary" | grep -q 'program interpreter'; then
    echo "$dist/$binary is dynamically linked; the image needs a static binary" >&2
    exit 1
  fi
done

echo "assembling $image with crane" >&2
work="$(mktemp -d)"
registry_pid=""
cleanup() {
  [[ -n "$registry_pid" ]] && kill "$registry_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/layer"
cp "$dist/ramp-controller" "$work/layer/ramp-controller"
# Reproducible layer: fixed owner (the non-root user), mode and time.
tar --create --file "$work/layer.tar" --directory "$work/layer" \
  --owner="$uid" --group="$uid" --numeric-owner --mode=0755 --mtime=@0 --sort=name ramp-controller
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$bin/crane" registry serve --address "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
  sleep 0.1
done
local_ref="127.0.0.1:$port/ramp-controller:$version"
"$bin/crane" append --insecure --oci-empty-base --platform linux/amd64 \
  --new_layer "$work/layer.tar" --new_tag "$local_ref" >/dev/null
"$bin/crane" mutate --insecure "$local_ref" \
  --set-platform linux/amd64 \
  --entrypoint /ramp-controller \
  --user "$uid:$uid" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.title=ramp-controller" \
  --label "org.opencontainers.image.licenses=Apache-2.0" \
  --tag "$local_ref" >/dev/null
"$bin/crane" pull --insecure "$local_ref" "$work/image.tar"
# The tarball names the published reference, not the loopback registry.
python3 - "$work/image.tar" "$dist/ramp-controller-image.tar" "$image" <<'EOF'
import io, json, sys, tarfile
source, target, reference = sys.argv[1:]
with tarfile.open(source) as src, tarfile.open(target, "w") as out:
    for member in src.getmembers():
        data = src.extractfile(member).read() if member.isfile() else None
        if member.name == "manifest.json":
            manifest = json.loads(data)
            for entry in manifest:
                entry["RepoTags"] = [reference]
            data = json.dumps(manifest).encode()
            member.size = len(data)
        out.addfile(member, None if data is None else io.BytesIO(data))
EOF
echo "$image" > "$dist/IMAGE"

echo "packaging the Helm chart" >&2
"$bin/helm" package deploy/helm/ramp --version "$version" --app-version "$version" --destination "$dist" >/dev/null

(cd "$dist" && sha256sum -- * | grep -v ' SHA256SUMS$' > SHA256SUMS)
echo "release $version in $dist:" >&2
ls -l "$dist" >&2
