# Ramp developer entry points. `make test` on a fresh machine installs what
# it needs (Debian packages, Go-built control plane, Rust crates), starts a
# local control plane, runs every test and tears it down again.

SHELL := /bin/bash
KUBECONFIG_PATH := $(CURDIR)/target/cluster/kubeconfig
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := prometheus curl openssl python3 ca-certificates iproute2 lua5.1 musl-tools

.PHONY: deps build crds lint test unit e2e cluster-up cluster-down demo bench release clean

## deps: install Debian packages and build the local control plane binaries
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi
	@command -v go >/dev/null || { echo "Go >= 1.26 is required to build the local control plane"; exit 1; }
	@command -v kubectl >/dev/null || { echo "kubectl is required (/usr/bin/kubectl)"; exit 1; }
	tests/cluster/build.sh

## build: the controller, the kubectl plugin and the test kubelet
build:
	cargo build --workspace --bins

## crds: regenerate crds/*.yaml and the Helm chart's copy from the Rust types
crds:
	cargo run --quiet --bin ramp-controller -- crds --out-dir crds
	cargo run --quiet --bin ramp-controller -- crds --out-dir deploy/helm/ramp/crds

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

cluster-up: deps build
	tests/cluster/up.sh
	kubectl --kubeconfig $(KUBECONFIG_PATH) apply --server-side --force-conflicts -k crds/ >/dev/null

cluster-down:
	tests/cluster/down.sh

unit:
	cargo test --workspace --lib --bins

## release: static binaries, the OCI image, the packaged chart and checksums in target/dist/
release: deps
	scripts/release.sh

## test: lint, unit tests and the end-to-end suite on a fresh local control plane
test: deps build lint release
	cargo test --workspace --no-run
	$(MAKE) cluster-up
	@status=0; RAMP_TEST_KUBECONFIG=$(KUBECONFIG_PATH) cargo test --workspace --no-fail-fast -- --test-threads=4 || status=$$?; \
	tests/cluster/down.sh; exit $$status

## demo: control plane + Prometheus + controller + a canary gated by analysis, walked through its steps
demo: deps build
	scripts/demo.sh

## bench: scale benchmark (N = 100, 1000, 10000 rollouts, 3 runs each on a fresh cluster); results in target/bench/
bench: deps
	cargo build --release --bin ramp-controller
	cargo build --workspace --bins
	scripts/bench.sh

clean: cluster-down
	cargo clean
