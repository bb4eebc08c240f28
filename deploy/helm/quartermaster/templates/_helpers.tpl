{{/* Names, labels and the pieces every service's manifests share. */}}

{{- define "qm.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's resource name: <fullname>-<component in kebab-case>. */}}
{{- define "qm.componentName" -}}
{{- printf "%s-%s" (include "qm.fullname" .root) (.component | kebabcase) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component | kebabcase }}
{{- end -}}

{{- define "qm.labels" -}}
{{ include "qm.selectorLabels" . }}
app.kubernetes.io/part-of: quartermaster
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "qm.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if eq $tag "latest" -}}
{{- fail "image.tag: 'latest' moves under a running release (pods restarted later get other code); give a release tag or image.digest" -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{- define "qm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "qm.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* QM_DATABASE_URL from the database Secret (never from values). */}}
{{- define "qm.databaseEnv" -}}
- name: QM_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
{{- end -}}

{{/* Pod-level settings every pod of the chart shares. A hook Job runs before the
release's own objects exist on install, so it names no ServiceAccount of ours (the
namespace's default, with no token mounted) and reads no ConfigMap. */}}
{{- define "qm.podCommon" -}}
{{- $root := .root | default . -}}
{{- with $root -}}
{{- if not $.hook -}}
serviceAccountName: {{ include "qm.serviceAccountName" . }}
{{ end -}}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A probe: native gRPC health for gRPC ports (of `service`: default the overall
    one), an HTTP GET for HTTP ones. */}}
{{- define "qm.probe" -}}
{{- if eq .port.protocol "grpc" -}}
grpc:
  port: {{ .port.number }}
  {{- with .service }}
  service: {{ . }}
  {{- end }}
{{- else -}}
httpGet:
  path: {{ .port.path | default "/" }}
  port: {{ .port.name }}
{{- end }}
{{ toYaml .timing }}
{{- end -}}
