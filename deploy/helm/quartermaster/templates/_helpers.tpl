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
{{- if eq (lower (toString $tag)) "latest" -}}
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
    one), asked on the `health` port when there is one (plaintext, whatever the TLS of
    the service's port: the kubelet's gRPC probes speak no TLS); an HTTP GET for HTTP
    ones (the probe's own `path`, else the port's; HTTPS with `https`). */}}
{{- define "qm.probe" -}}
{{- if eq .port.protocol "grpc" -}}
grpc:
  port: {{ (.health | default .port).number }}
  {{- with .service }}
  service: {{ . }}
  {{- end }}
{{- else -}}
httpGet:
  path: {{ .timing.path | default .port.path | default "/" }}
  port: {{ .port.name }}
  {{- if .https }}
  scheme: HTTPS
  {{- end }}
{{- end }}
{{ toYaml (omit .timing "path") }}
{{- end -}}

{{/* Whether a service's HTTP port speaks HTTPS: `port.tls` (the ingest) with
tls.enabled (which sets QM_TLS_CERT_FILE). "true" or "". */}}
{{- define "qm.https" -}}
{{- if and .svc.port.tls .root.Values.tls.enabled -}}
true
{{- end -}}
{{- end -}}

{{/* The TLS settings the chart owns, as YAML: with tls.enabled every server serves
the mounted certificate and key and every client trusts the mounted CA (a server with
TLS and clients in plaintext would refuse each other); off, empty. */}}
{{- define "qm.tlsSettings" -}}
{{- $tls := .Values.tls -}}
{{- $dir := trimSuffix "/" $tls.mountPath -}}
QM_TLS_CERT_FILE: {{ ternary (printf "%s/%s" $dir $tls.certKey) "" $tls.enabled | quote }}
QM_TLS_KEY_FILE: {{ ternary (printf "%s/%s" $dir $tls.keyKey) "" $tls.enabled | quote }}
QM_TLS_CA_FILE: {{ ternary (printf "%s/%s" $dir $tls.caKey) "" $tls.enabled | quote }}
{{- end -}}

{{/* Refusals of TLS settings that would not work: the files exist only with
tls.enabled and only under tls.mountPath; the chart sets the server's own files. */}}
{{- define "qm.tlsChecks" -}}
{{- $tls := .Values.tls -}}
{{- $settings := .Values.settings -}}
{{- range $env := list "QM_TLS_CERT_FILE" "QM_TLS_KEY_FILE" "QM_TLS_CA_FILE" -}}
{{- if ne (toString (get $settings $env | default "")) "" -}}
{{- fail (printf "settings.%s: the chart sets it from tls (tls.enabled: true mounts tls.existingSecret at tls.mountPath and points QM_TLS_CERT_FILE, QM_TLS_KEY_FILE and QM_TLS_CA_FILE at its keys tls.certKey, tls.keyKey, tls.caKey); leave it empty" $env) -}}
{{- end -}}
{{- end -}}
{{- $set := dict -}}
{{- range $env := list "QM_TLS_CLIENT_CA_FILE" "QM_TLS_CLIENT_CERT_FILE" "QM_TLS_CLIENT_KEY_FILE" "QM_TLS_SERVER_NAME" -}}
{{- $value := toString (get $settings $env | default "") -}}
{{- if ne $value "" -}}
{{- $_ := set $set $env $value -}}
{{- if not $tls.enabled -}}
{{- fail (printf "settings.%s: TLS settings work only with tls.enabled: true (the chart then mounts the files and turns TLS on for every server and client)" $env) -}}
{{- end -}}
{{- if and (ne $env "QM_TLS_SERVER_NAME") (not (hasPrefix (printf "%s/" (trimSuffix "/" $tls.mountPath)) $value)) -}}
{{- fail (printf "settings.%s: %s is not under tls.mountPath (%s), the only files the chart mounts" $env $value $tls.mountPath) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if ne (hasKey $set "QM_TLS_CLIENT_CERT_FILE") (hasKey $set "QM_TLS_CLIENT_KEY_FILE") -}}
{{- fail "settings.QM_TLS_CLIENT_CERT_FILE and QM_TLS_CLIENT_KEY_FILE: set both (a client certificate without its key, or a key without its certificate, stops every process at start)" -}}
{{- end -}}
{{- if and (hasKey $set "QM_TLS_CLIENT_CA_FILE") (not (hasKey $set "QM_TLS_CLIENT_CERT_FILE")) -}}
{{- fail "settings.QM_TLS_CLIENT_CA_FILE: with mutual TLS every server refuses clients without a certificate, the release's own too (the Cost API, requests and the notifier call policy, the Cost API and requests): set QM_TLS_CLIENT_CERT_FILE and QM_TLS_CLIENT_KEY_FILE as well" -}}
{{- end -}}
{{- end -}}

{{/* The secretEnv variables of a service, as a list. */}}
{{- define "qm.secretVars" -}}
{{- $vars := list -}}
{{- range .secretEnv }}{{ $vars = append $vars .env }}{{ end -}}
{{- toJson $vars -}}
{{- end -}}

{{/* Refusals that are a service's own, each naming the value to change. */}}
{{- define "qm.checks" -}}
{{- $component := .component -}}
{{- $svc := .svc -}}
{{- $settings := .root.Values.settings -}}
{{- $secrets := include "qm.secretVars" $svc | fromJsonArray -}}
{{- if and (include "qm.https" .) (ne (toString ($settings.QM_TLS_CLIENT_CA_FILE | default "")) "") -}}
{{- fail (printf "services.%s: with settings.QM_TLS_CLIENT_CA_FILE the %s asks every client for a certificate, and the kubelet's probes have none: every replica would stay unready. Terminate mutual TLS in front of it (an Ingress or mesh) or disable the service" $component $component) -}}
{{- end -}}
{{- /* A service with callers (its port is not metrics alone: the gRPC services, the
ingest) refuses every call but health without QM_TOKENS: a release that answers
nobody is refused here rather than found by its first caller. */ -}}
{{- range $env := $secrets -}}
{{- if has $env (include "qm.chartOwned" $.root | fromJsonArray) -}}
{{- fail (printf "services.%s.secretEnv: %s is set by the chart (an address, a port, the broker, the database URL, the partitions or a TLS file, from structured values); a Secret would override it: remove it" $component $env) -}}
{{- end -}}
{{- end -}}
{{- if and (ne $svc.port.name "metrics") (not (has "QM_TOKENS" $secrets)) -}}
{{- fail (printf "services.%s: no QM_TOKENS in services.%s.secretEnv, so it would refuse every call (401/UNAUTHENTICATED). Map the Secret's token list ({env: QM_TOKENS, secretKey: tokens}: name:role[+role]:token,..., docs/security.md), or set services.%s.enabled: false" $component $component $component) -}}
{{- end -}}
{{- if and (eq $component "requests") (not (has "QM_REQUESTS_CLIENT_TOKEN" $secrets)) -}}
{{- fail "services.requests: no QM_REQUESTS_CLIENT_TOKEN in services.requests.secretEnv: policy and the Cost API would refuse its calls, so every request would fail. Map a reader token of their QM_TOKENS ({env: QM_REQUESTS_CLIENT_TOKEN, secretKey: directory-token})" -}}
{{- end -}}
{{- if eq $component "notifier" -}}
{{- if and (not (has "QM_NOTIFIER_SLACK_BOT_TOKEN" $secrets)) (eq (toString ($settings.QM_NOTIFIER_SLACK_BASE_URL | default "")) "") -}}
{{- fail "services.notifier: the notifier can't start without QM_NOTIFIER_SLACK_BOT_TOKEN: map it in services.notifier.secretEnv ({env: QM_NOTIFIER_SLACK_BOT_TOKEN, secretKey: ...}), or set services.notifier.enabled: false" -}}
{{- end -}}
{{- if dig "interactivity" "enabled" false $svc -}}
{{- if not (has "QM_NOTIFIER_SLACK_SIGNING_SECRET" $secrets) -}}
{{- fail "services.notifier.interactivity.enabled: the endpoint exists only with QM_NOTIFIER_SLACK_SIGNING_SECRET (clicks are checked against it): map it in services.notifier.secretEnv" -}}
{{- end -}}
{{- if eq (toString ($settings.QM_NOTIFIER_SLACK_SOCKET_MODE | default "") | lower) "true" -}}
{{- fail "services.notifier.interactivity.enabled and settings.QM_NOTIFIER_SLACK_SOCKET_MODE: under Socket Mode the notifier dials out to Slack and listens on no port; choose one" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}


{{/* The hook Jobs' settings: QM_KAFKA_BOOTSTRAP and every non-empty settings.QM_KAFKA_*
(security protocol, SASL mechanism and user, SSL files) and QM_LOG_LEVEL, as the
services get them from the ConfigMap, which a pre-install hook can't read. A variable
the Job's secretEnv maps (a username of its own, say) is left to the Secret. */}}
{{- define "qm.hookEnv" -}}
{{- $mapped := include "qm.secretVars" (dict "secretEnv" .secretEnv) | fromJsonArray -}}
- name: QM_KAFKA_BOOTSTRAP
  value: {{ .root.Values.kafka.bootstrap | quote }}
{{- range $env, $value := .root.Values.settings }}
{{- if and (or (hasPrefix "QM_KAFKA_" $env) (eq $env "QM_LOG_LEVEL")) (ne (toString $value) "") (not (has $env $mapped)) }}
- name: {{ $env }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Refusals of the hook Jobs' values, each naming the value to change. */}}
{{- define "qm.hookChecks" -}}
{{- $protocol := toString (.Values.settings.QM_KAFKA_SECURITY_PROTOCOL | default "") -}}
{{- $mapped := include "qm.secretVars" (dict "secretEnv" .Values.topics.secretEnv) | fromJsonArray -}}
{{- if and .Values.topics.create (hasPrefix "SASL_" $protocol) (not (has "QM_KAFKA_SASL_PASSWORD" $mapped)) -}}
{{- fail (printf "topics.secretEnv: with settings.QM_KAFKA_SECURITY_PROTOCOL=%s the topics Job needs QM_KAFKA_SASL_PASSWORD of a Kafka user allowed to create topics: map it ({env: QM_KAFKA_SASL_PASSWORD, secretKey: ...}), or set topics.create: false and create them yourself" $protocol) -}}
{{- end -}}
{{- end -}}


{{/* The variables the chart sets itself (as a JSON list): the ConfigMap's own keys
(the broker, the partitions, the services' addresses, the TLS files) and every
service's listen, metrics, health and interactivity variables, and the database URL.
A secretEnv entry for one would silently override it. */}}
{{- define "qm.chartOwned" -}}
{{- $owned := list "QM_KAFKA_BOOTSTRAP" "QM_TOPIC_PARTITIONS" "QM_DATABASE_URL" "QM_DIRECTORY_ADDR" "QM_REQUESTS_POLICY_ADDR" "QM_REQUESTS_USAGE_API_ADDR" "QM_NOTIFIER_USAGE_API_ADDR" "QM_NOTIFIER_REQUESTS_ADDR" "QM_TLS_CERT_FILE" "QM_TLS_KEY_FILE" "QM_TLS_CA_FILE" -}}
{{- range $svc := .Values.services -}}
{{- $owned = append $owned $svc.listenEnv -}}
{{- range $key := list "metrics" "health" "interactivity" -}}
{{- with (get $svc $key) }}{{ $owned = append $owned .env }}{{ end -}}
{{- end -}}
{{- end -}}
{{- toJson $owned -}}
{{- end -}}
