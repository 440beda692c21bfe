{{/* The chart name, overridable. */}}
{{- define "eds-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name every object gets. A release named like the chart (the usual
`helm install eds-server ...`) gives plain `eds-server`, as kustomize does.
*/}}
{{- define "eds-server.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "eds-server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eds-server.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Selector labels: stable for the life of a release. */}}
{{- define "eds-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eds-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels shared with the kustomize base, then Helm's own. */}}
{{- define "eds-server.labels" -}}
{{ include "eds-server.selectorLabels" . }}
app.kubernetes.io/component: control-plane
app.kubernetes.io/part-of: eds
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/*
What eds-server reads (eds-server/src/watch.rs): list then watch, nothing
fetched by name, nothing written. Pods only when they are watched.
*/}}
{{- define "eds-server.rules" -}}
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
{{- if or .Values.watchPods .Values.endpointPodLabels }}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}
