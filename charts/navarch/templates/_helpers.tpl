{{/* Chart name, truncated to the 63 characters Kubernetes allows in names. */}}
{{- define "navarch.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix for every object this release creates. */}}
{{- define "navarch.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Object names get a component suffix, so the prefix leaves room for it. */}}
{{- define "navarch.agentName" -}}
{{- printf "%s-agent" (include "navarch.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}

{{- define "navarch.operatorName" -}}
{{- printf "%s-operator" (include "navarch.fullname" . | trunc 51 | trimSuffix "-") -}}
{{- end -}}

{{/* The username the API server gives the agent's ServiceAccount: RBAC subject and VAP match. */}}
{{- define "navarch.agentUsername" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "navarch.agentName" .) -}}
{{- end -}}

{{/* The operator's username: RBAC subject and the Node-scope VAP match. */}}
{{- define "navarch.operatorUsername" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "navarch.operatorName" .) -}}
{{- end -}}

{{- define "navarch.peeringName" -}}
{{- .Values.operator.peering.name | default (include "navarch.fullname" .) -}}
{{- end -}}

{{/* The Secret with the metrics serving certificate: the user's, or the one the chart generates. */}}
{{- define "navarch.metricsTlsSecret" -}}
{{- .Values.metrics.tls.secretName | default (printf "%s-metrics-tls" (include "navarch.fullname" . | trunc 51 | trimSuffix "-")) -}}
{{- end -}}

{{/* The DNS name of a component's metrics Service, which its certificate must carry. */}}
{{- define "navarch.metricsServiceHost" -}}
{{- printf "%s-metrics.%s.svc" (include (printf "navarch.%sName" .component) .root) .root.Release.Namespace -}}
{{- end -}}

{{/* Flags, mount and volume that give a component its metrics certificate (or plain HTTP). */}}
{{- define "navarch.metricsTlsArgs" -}}
{{- if .Values.metrics.secure -}}
- --metrics-cert-file=/etc/navarch/metrics-tls/tls.crt
- --metrics-key-file=/etc/navarch/metrics-tls/tls.key
{{- else -}}
- --metrics-insecure
{{- end -}}
{{- end -}}

{{- define "navarch.metricsTlsMount" -}}
- name: metrics-tls
  mountPath: /etc/navarch/metrics-tls
  readOnly: true
{{- end -}}

{{- define "navarch.metricsTlsVolume" -}}
- name: metrics-tls
  secret:
    secretName: {{ include "navarch.metricsTlsSecret" . }}
    defaultMode: 0440
{{- end -}}

{{- define "navarch.labels" -}}
app.kubernetes.io/name: {{ include "navarch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: navarch
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "navarch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "navarch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "navarch.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
Combinations the schema cannot express. Included by every template that renders objects, so
`helm template`, `helm install` and `helm upgrade` all stop with the same message.
*/}}
{{- define "navarch.validate" -}}
{{- $v := .Values -}}
{{- /* Agent and operator both off is fine when the release ships the policy (the demo runs
both components outside the cluster); with the policy off too it would install nothing. */ -}}
{{- if not (or $v.agent.enabled $v.operator.enabled $v.defaultPolicy.enabled) -}}
{{- fail "navarch: agent.enabled, operator.enabled and defaultPolicy.enabled are all false, so the release would install nothing; enable at least one (for the CRDs alone: kubectl apply --server-side -f charts/navarch/crds/)" -}}
{{- end -}}
{{- if hasKey $v.defaultPolicy.overrides "taintKey" -}}
{{- fail "navarch: set the top-level taintKey instead of defaultPolicy.overrides.taintKey, so the agent tolerates the taint the policy puts on" -}}
{{- end -}}
{{- if and $v.operator.enabled $v.operator.peering.enabled (not (.Capabilities.APIVersions.Has "kopf.dev/v1/ClusterKopfPeering")) -}}
{{- fail "navarch: operator.peering.enabled=true needs kopf's ClusterKopfPeering CRD (clusterkopfpeerings.kopf.dev), which this chart does not install; apply kopf's peering.yaml first (README, \"Operate\"), or for `helm template` pass --api-versions kopf.dev/v1/ClusterKopfPeering" -}}
{{- end -}}
{{- if and $v.metrics.networkPolicy.enabled (not $v.metrics.networkPolicy.from) -}}
{{- fail "navarch: metrics.networkPolicy.enabled=true needs at least one peer in metrics.networkPolicy.from (e.g. the namespace of your Prometheus); a policy without peers would admit every scraper" -}}
{{- end -}}
{{- if and $v.serviceMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) -}}
{{- fail "navarch: serviceMonitor.enabled=true needs the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1), which this cluster does not serve; install the Prometheus Operator first, or for `helm template` pass --api-versions monitoring.coreos.com/v1/ServiceMonitor" -}}
{{- end -}}
{{- end -}}
