{{/*
Exactly the API calls ramp-controller makes, as deploy/clusterrole.yaml and
deploy/namespaced/role.yaml grant them (tests/helm_chart.rs checks that the
rendered rules equal those files'). "ramp.rules" are namespaced resources;
"ramp.clusterReadRules" what is read cluster-wide in either scope.
*/}}
{{- define "ramp.rules" -}}
- apiGroups: [ramp.dev]
  resources: [rollouts, analysistemplates]
  verbs: [get, list, watch]
- apiGroups: [ramp.dev]
  resources: [rollouts/status, analysisruns/status]
  verbs: [patch]
# Only to add and remove the traffic-routing finalizer (metadata.finalizers).
- apiGroups: [ramp.dev]
  resources: [rollouts]
  verbs: [patch]
- apiGroups: [ramp.dev]
  resources: [analysisruns]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [get, list, watch, create, patch, delete]
# workloadRef: the named Deployment, ReplicaSet or PodTemplate is cached
# (a kind is watched only once a Rollout names it); of a Deployment only
# spec.replicas is patched, under workloadRef.scaleDown.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, patch]
- apiGroups: [""]
  resources: [podtemplates]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, patch]
# Traffic routing: routes are cached and patched only at the canary/stable
# weights and the header/mirror rules Ramp inserts.
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes, grpcroutes, tcproutes, tlsroutes]
  verbs: [list, watch, patch]
- apiGroups: [networking.istio.io]
  resources: [virtualservices, destinationrules]
  verbs: [list, watch, patch]
# Pods: listed (metadata only) for restarts and role labels, evicted for restarts.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, patch]
- apiGroups: [""]
  resources: [pods/eviction]
  verbs: [create]
# Job metrics: one Job per measurement, owned by its AnalysisRun.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, create, delete]
- apiGroups: [ramp.dev]
  resources: [analysisruns/finalizers]
  verbs: [update]
# Secrets named by analysis arguments and notification settings, read on demand.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{- define "ramp.clusterReadRules" -}}
- apiGroups: [ramp.dev]
  resources: [clusteranalysistemplates]
  verbs: [get, list, watch]
# A route's Gateways and their GatewayClass: supportedFeatures gate setMirrorRoute.
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways, gatewayclasses]
  verbs: [list, watch]
{{- end }}
