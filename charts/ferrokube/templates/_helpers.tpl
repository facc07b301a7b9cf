{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "ferrokube.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: fullnameOverride, else <release>-<chart> (just the release
name when it already contains the chart name). Component suffixes are at most 19
characters, so the prefix is cut to 44.
*/}}
{{- define "ferrokube.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 44 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 44 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 44 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ferrokube.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "ferrokube.labels" -}}
helm.sh/chart: {{ include "ferrokube.chart" . | quote }}
app.kubernetes.io/name: {{ include "ferrokube.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/part-of: ferrokube
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of one component's objects. Call with (dict "root" $ "component" "scheduler").
*/}}
{{- define "ferrokube.componentLabels" -}}
{{ include "ferrokube.labels" .root }}
app.kubernetes.io/component: {{ .component | quote }}
{{- end }}

{{/* Selector labels of one component's pods; same call as ferrokube.componentLabels. */}}
{{- define "ferrokube.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferrokube.name" .root | quote }}
app.kubernetes.io/instance: {{ .root.Release.Name | quote }}
app.kubernetes.io/component: {{ .component | quote }}
{{- end }}

{{/* <fullname>-<component>. */}}
{{- define "ferrokube.componentName" -}}
{{- printf "%s-%s" (include "ferrokube.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A component's ServiceAccount name. Call with (dict "root" $ "component" "scheduler"
"values" .Values.scheduler).
*/}}
{{- define "ferrokube.serviceAccountName" -}}
{{- if .values.serviceAccount.create }}
{{- default (include "ferrokube.componentName" .) .values.serviceAccount.name }}
{{- else }}
{{- required (printf "%s.serviceAccount.name is required when %s.serviceAccount.create is false" .key .key) .values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* A component's image reference; the tag defaults to the chart's appVersion. */}}
{{- define "ferrokube.image" -}}
{{- printf "%s:%s" .values.image.repository (default .root.Chart.AppVersion .values.image.tag) }}
{{- end }}

{{/* The pod securityContext: the component's own when set, else the chart-wide one. */}}
{{- define "ferrokube.podSecurityContext" -}}
{{- toYaml (default .root.Values.podSecurityContext .values.podSecurityContext) }}
{{- end }}

{{- define "ferrokube.containerSecurityContext" -}}
{{- toYaml (default .root.Values.containerSecurityContext .values.containerSecurityContext) }}
{{- end }}

{{/* Scheduling constraints and pull secrets shared by every component's pod spec. */}}
{{- define "ferrokube.podPlacement" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
