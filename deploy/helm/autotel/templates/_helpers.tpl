{{- define "autotel.name" -}}autotel{{- end -}}

{{- define "autotel.fullname" -}}
{{- if eq .Release.Name "autotel" -}}autotel{{- else -}}{{ printf "%s-autotel" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "autotel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "autotel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "autotel.labels" -}}
{{ include "autotel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Capabilities: see the comment in the DaemonSet template. */}}
{{- define "autotel.capabilities" -}}
- BPF
- PERFMON
- SYS_PTRACE
- DAC_READ_SEARCH
- SYS_RESOURCE
{{- if .Values.tlsCapture }}
- SYS_ADMIN
{{- end }}
{{- if eq (toString .Values.contextPropagation) "tcp_option" }}
- NET_ADMIN
{{- end }}
{{- end -}}
