{{- define "ramp.labels" -}}
app.kubernetes.io/name: ramp
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "ramp.selectorLabels" -}}
app.kubernetes.io/name: ramp
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ramp.serviceAccountName" -}}
{{- default "ramp-controller" .Values.serviceAccount.name }}
{{- end }}

{{/* Cluster-scoped objects carry the release name, so two releases (say two namespaced installs) do not collide. */}}
{{- define "ramp.clusterName" -}}
{{- if eq .Release.Name "ramp" }}ramp-controller{{ else }}{{ printf "ramp-controller-%s" .Release.Name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}

{{- define "ramp.watchNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace }}
{{- end }}

{{- define "ramp.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "ramp.validate" -}}
{{- if not (has .Values.scope (list "cluster" "namespace")) }}
{{- fail (printf "scope must be cluster or namespace, not %q" .Values.scope) }}
{{- end }}
{{- if not (has .Values.logFormat (list "json" "text")) }}
{{- fail (printf "logFormat must be json or text, not %q" .Values.logFormat) }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount above 1 needs leaderElection.enabled: two leaders would both write" }}
{{- end }}
{{- end }}
