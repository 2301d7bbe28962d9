// Pins the upstream modules whose CRD manifests the local test cluster
// installs: Gateway API (standard channel) and Istio's networking API.
// Nothing is compiled from here; tests/cluster/install-routing-crds.sh reads
// the YAML files out of the downloaded, checksum-verified modules.
module ramp.dev/tests/cluster/routing-crds

go 1.25.0

require (
	istio.io/api v1.32.0
	sigs.k8s.io/gateway-api v1.6.3
)
