{{/*
Names, labels and the pieces shared by the ingress and the worker templates.
*/}}

{{- define "callhook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-callhook, or <release> when it already contains the chart name. Leaves room for "-ingress". */}}
{{- define "callhook.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "callhook.ingress.fullname" -}}{{ include "callhook.fullname" . }}-ingress{{- end }}
{{- define "callhook.worker.fullname" -}}{{ include "callhook.fullname" . }}-worker{{- end }}
{{- define "callhook.rabbitmq.fullname" -}}{{ include "callhook.fullname" . }}-rabbitmq{{- end }}

{{- define "callhook.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "callhook.labels" -}}
helm.sh/chart: {{ include "callhook.chart" . }}
app.kubernetes.io/name: {{ include "callhook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: callhook
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "worker"). Never change them: a
Deployment's selector is immutable. */}}
{{- define "callhook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "callhook.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "callhook.componentLabels" -}}
{{ include "callhook.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "callhook.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "callhook.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "callhook.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The name of the Secret with callhook's credentials; the schema requires it, this is the message if the
schema was skipped. */}}
{{- define "callhook.secretName" -}}
{{- required "secrets.existingSecret: name the Secret holding callhook's credentials (see README)" .Values.secrets.existingSecret }}
{{- end }}

{{/* The container environment of one component, (dict "ctx" $ "component" "ingress"|"worker"), as YAML.
Built as a list so that absent optional settings leave no trace. Credentials are references to Secrets only.
CALLHOOK_AMQP_URL comes from an existing Secret, or is assembled from the RabbitmqCluster's default-user Secret:
Kubernetes expands $(VAR) from variables defined earlier in the same list. */}}
{{- define "callhook.env" -}}
{{- $v := .ctx.Values }}
{{- $env := list }}
{{- if $v.rabbitmq.create }}
{{- $ds := printf "%s-default-user" (include "callhook.rabbitmq.fullname" .ctx) }}
{{- $env = append $env (dict "name" "RABBITMQ_USERNAME" "valueFrom" (dict "secretKeyRef" (dict "name" $ds "key" "username"))) }}
{{- $env = append $env (dict "name" "RABBITMQ_PASSWORD" "valueFrom" (dict "secretKeyRef" (dict "name" $ds "key" "password"))) }}
{{- $env = append $env (dict "name" "CALLHOOK_AMQP_URL" "value" (printf "amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@%s/" (include "callhook.rabbitmq.hostPort" .ctx))) }}
{{- else }}
{{- $amqpSecret := required "amqp.existingSecret: name the Secret holding the AMQP URL, or set rabbitmq.create=true" $v.amqp.existingSecret }}
{{- $env = append $env (dict "name" "CALLHOOK_AMQP_URL" "valueFrom" (dict "secretKeyRef" (dict "name" $amqpSecret "key" $v.amqp.key))) }}
{{- end }}
{{- $env = append $env (dict "name" "CALLHOOK_LOG_LEVEL" "value" $v.logging.level) }}
{{- $env = append $env (dict "name" "CALLHOOK_LOG_FORMAT" "value" $v.logging.format) }}
{{- $fromSecret := list }}
{{- if eq .component "ingress" }}
{{- $env = append $env (dict "name" "CALLHOOK_INGRESS_PORT" "value" ($v.ingress.port | int | toString)) }}
{{- if gt (int $v.ingress.apiPort) 0 }}
{{- $env = append $env (dict "name" "CALLHOOK_API_PORT" "value" ($v.ingress.apiPort | int | toString)) }}
{{- end }}
{{- with $v.worker.apps }}
{{- $env = append $env (dict "name" "CALLHOOK_API_APPS" "value" (keys . | sortAlpha | join ",")) }}
{{- end }}
{{- if gt (int $v.ingress.maxBodyBytes) 0 }}
{{- $env = append $env (dict "name" "CALLHOOK_MAX_BODY_BYTES" "value" ($v.ingress.maxBodyBytes | int | toString)) }}
{{- end }}
{{- $fromSecret = list (list "CALLHOOK_APP_SECRETS" $v.secrets.keys.appSecrets) (list "CALLHOOK_VERIFY_TOKEN" $v.secrets.keys.verifyToken) (list "CALLHOOK_API_TOKENS" $v.secrets.keys.apiTokens) }}
{{- else }}
{{- $w := $v.worker }}
{{- $env = append $env (dict "name" "CALLHOOK_METRICS_PORT" "value" ($w.metricsPort | int | toString)) }}
{{- $env = append $env (dict "name" "CALLHOOK_MAX_CALLS" "value" ($w.maxCalls | int | toString)) }}
{{- $env = append $env (dict "name" "CALLHOOK_APP" "value" $w.app) }}
{{- with $w.apps }}
{{- $apps := list }}
{{- range $name := keys . | sortAlpha }}
{{- $apps = append $apps (printf "%s=%s" $name (index $w.apps $name)) }}
{{- end }}
{{- $env = append $env (dict "name" "CALLHOOK_APPS" "value" (join "," $apps)) }}
{{- end }}
{{- $env = append $env (dict "name" "CALLHOOK_DRAIN_TIMEOUT_SECONDS" "value" ($w.drainTimeoutSeconds | int | toString)) }}
{{- with $w.graph.url }}
{{- $env = append $env (dict "name" "CALLHOOK_GRAPH_URL" "value" .) }}
{{- end }}
{{- with $w.graph.version }}
{{- $env = append $env (dict "name" "CALLHOOK_GRAPH_VERSION" "value" .) }}
{{- end }}
{{- with $w.ice.servers }}
{{- $env = append $env (dict "name" "CALLHOOK_ICE_SERVERS" "value" (join "," .)) }}
{{- end }}
{{- if $w.archive.enabled }}
{{- $env = append $env (dict "name" "CALLHOOK_ARCHIVE_DIR" "value" $w.archive.mountPath) }}
{{- end }}
{{- $fromSecret = list (list "CALLHOOK_ACCESS_TOKEN" $v.secrets.keys.accessToken) (list "CALLHOOK_TURN_USERNAME" $v.secrets.keys.turnUsername) (list "CALLHOOK_TURN_CREDENTIAL" $v.secrets.keys.turnCredential) }}
{{- end }}
{{- range $fromSecret }}
{{- if index . 1 }}
{{- $env = append $env (dict "name" (index . 0) "valueFrom" (dict "secretKeyRef" (dict "name" (include "callhook.secretName" $.ctx) "key" (index . 1)))) }}
{{- end }}
{{- end }}
{{- $extra := ternary $v.ingress.extraEnv $v.worker.extraEnv (eq .component "ingress") }}
{{- toYaml (concat $env (default list $extra)) }}
{{- end }}

{{- define "callhook.rabbitmq.hostPort" -}}
{{- printf "%s.%s.svc:5672" (include "callhook.rabbitmq.fullname" .) .Release.Namespace }}
{{- end }}

{{/* The worker's grace period: drain timeout + margin. The schema bounds both; this guard holds even when the
schema is skipped, because a grace period at or below the drain timeout kills calls mid-drain. */}}
{{- define "callhook.worker.terminationGracePeriodSeconds" -}}
{{- $drain := int .Values.worker.drainTimeoutSeconds }}
{{- $margin := int .Values.worker.terminationMarginSeconds }}
{{- if lt $margin 10 }}
{{- fail (printf "worker.terminationMarginSeconds=%d: needs at least 10 s after the drain to terminate the remaining calls through the Graph API" $margin) }}
{{- end }}
{{- $grace := add $drain $margin }}
{{- if le $grace $drain }}
{{- fail "worker terminationGracePeriodSeconds must exceed worker.drainTimeoutSeconds" }}
{{- end }}
{{- $grace }}
{{- end }}

{{/* "true" when the ScaledObject is rendered. */}}
{{- define "callhook.keda.enabled" -}}
{{- if eq .Values.autoscaling.mode "keda" }}
{{- if or (not .Values.autoscaling.keda.checkCapabilities) (.Capabilities.APIVersions.Has "keda.sh/v1alpha1") }}true{{ end }}
{{- end }}
{{- end }}

{{/* "true" when the worker HPA is rendered: mode hpa, or mode keda on a cluster without KEDA. */}}
{{- define "callhook.workerHpa.enabled" -}}
{{- if eq .Values.autoscaling.mode "hpa" }}true
{{- else if and (eq .Values.autoscaling.mode "keda") (not (include "callhook.keda.enabled" .)) }}true
{{- end }}
{{- end }}

{{/* PromQL label matchers of one component's series as a prometheus-operator ServiceMonitor labels them. */}}
{{- define "callhook.promql.worker" -}}
namespace="{{ .Release.Namespace }}",service="{{ include "callhook.worker.fullname" . }}"
{{- end }}
{{- define "callhook.promql.ingress" -}}
namespace="{{ .Release.Namespace }}",service="{{ include "callhook.ingress.fullname" . }}"
{{- end }}

{{/* Capacity used by the workers that are not draining (a draining worker takes no new calls). */}}
{{- define "callhook.promql.capacityUsed" -}}
{{- $w := include "callhook.promql.worker" . -}}
sum(callhook_calls_active{ {{- $w -}} } unless on(instance) (callhook_worker_draining{ {{- $w -}} } == 1)) / sum(callhook_calls_capacity{ {{- $w -}} } unless on(instance) (callhook_worker_draining{ {{- $w -}} } == 1))
{{- end }}

{{/* Default topology spread: soft, over nodes and zones. (dict "ctx" $ "component" "worker") */}}
{{- define "callhook.topologySpread" -}}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "callhook.selectorLabels" . | nindent 6 }}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "callhook.selectorLabels" . | nindent 6 }}
{{- end }}

{{/* The writable /tmp of every pod. */}}
{{- define "callhook.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{/* NetworkPolicy egress rules both components need: DNS and AMQP, plus networkPolicy.extraEgress. */}}
{{- define "callhook.networkPolicy.commonEgress" -}}
{{- $np := .Values.networkPolicy }}
{{- $dns := dict "ports" (list (dict "port" 53 "protocol" "UDP") (dict "port" 53 "protocol" "TCP")) }}
{{- with $np.dns.to }}
{{- $_ := set $dns "to" . }}
{{- end }}
{{- $amqpPorts := list }}
{{- range $np.amqp.ports }}
{{- $amqpPorts = append $amqpPorts (dict "port" (int .) "protocol" "TCP") }}
{{- end }}
{{- $amqp := dict "ports" $amqpPorts }}
{{- if $np.amqp.to }}
{{- $_ := set $amqp "to" $np.amqp.to }}
{{- else if .Values.rabbitmq.create }}
{{- $_ := set $amqp "to" (list (dict "podSelector" (dict "matchLabels" (dict "app.kubernetes.io/name" (include "callhook.rabbitmq.fullname" .))))) }}
{{- end }}
{{- toYaml (concat (list $dns $amqp) (default list $np.extraEgress)) }}
{{- end }}

{{/* Peers allowed to scrape metrics: empty means any pod of the cluster. */}}
{{- define "callhook.networkPolicy.metricsFrom" -}}
{{- toYaml (default (list (dict "namespaceSelector" (dict))) .Values.networkPolicy.metricsFrom) }}
{{- end }}
