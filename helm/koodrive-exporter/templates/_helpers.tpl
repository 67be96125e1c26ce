{{- define "koodrive-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "koodrive-exporter.fullname" -}}
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

{{- define "koodrive-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "koodrive-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "koodrive-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "koodrive-exporter.labels" -}}
helm.sh/chart: {{ include "koodrive-exporter.chart" . }}
{{ include "koodrive-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: koodrive-exporter
{{- end }}

{{- define "koodrive-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "koodrive-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "koodrive-exporter.image" -}}
{{- $repository := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repository = printf "%s/%s" .Values.image.registry .Values.image.repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the account secret files, if any. */}}
{{- define "koodrive-exporter.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if .Values.secrets }}
{{- printf "%s-secrets" (include "koodrive-exporter.fullname" .) }}
{{- end }}
{{- end }}

{{- define "koodrive-exporter.webConfigEnabled" -}}
{{- if .Values.webConfig.config }}true{{ end }}
{{- end }}

{{- define "koodrive-exporter.tlsEnabled" -}}
{{- if and .Values.webConfig.config (hasKey .Values.webConfig.config "tls_server_config") }}true{{ end }}
{{- end }}

{{- define "koodrive-exporter.basicAuthEnabled" -}}
{{- if and .Values.webConfig.config (hasKey .Values.webConfig.config "basic_auth_users") }}true{{ end }}
{{- end }}

{{- define "koodrive-exporter.scheme" -}}
{{- if include "koodrive-exporter.tlsEnabled" . }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/* Value combinations the schema cannot refuse, refused at render with what to do. */}}
{{- define "koodrive-exporter.validate" -}}
{{- if and .Values.demo .Values.config.accounts }}
{{- fail "demo: true runs fake accounts instead of config.accounts; set one of them, not both" }}
{{- end }}
{{- if not (or .Values.demo .Values.config.accounts) }}
{{- fail "config.accounts is empty: add the KooDrive accounts to poll (see the chart's README), or set demo: true to try the chart with two fake accounts" }}
{{- end }}
{{- if and .Values.grafanaDashboard.enabled (not .Values.prometheusRule.enabled) }}
{{- fail "grafanaDashboard.enabled needs prometheusRule.enabled: the dashboard's panels read the chart's recording rules" }}
{{- end }}
{{- end }}
