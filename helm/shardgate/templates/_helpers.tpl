{{/*
Names, labels and shared snippets of the shardgate chart. Every resource takes its labels from
"shardgate.labels" and every selector from "shardgate.selectorLabels", both called with
(dict "ctx" $ "component" "ingress|partition|redis").
*/}}

{{- define "shardgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or the release name alone when it already contains the chart name. */}}
{{- define "shardgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "shardgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The name of one component's resources: <fullname>-<component> (truncated to fit DNS labels). */}}
{{- define "shardgate.componentName" -}}
{{- printf "%s-%s" (include "shardgate.fullname" .ctx | trunc 50 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "shardgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shardgate.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "shardgate.labels" -}}
{{ include "shardgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: shardgate
helm.sh/chart: {{ include "shardgate.chart" .ctx }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
metadata.annotations (indented for a top-level metadata block) from commonAnnotations plus the
optional .extra; nothing at all when both are empty. Call as {{- include ... }} after the labels.
*/}}
{{- define "shardgate.annotations" -}}
{{- $all := merge (deepCopy (default dict .extra)) (deepCopy .ctx.Values.commonAnnotations) -}}
{{- if $all }}
  annotations:
    {{- toYaml $all | nindent 4 }}
{{- end }}
{{- end -}}

{{/* registry/repository:tag or @digest from an image block (.image) with the chart's appVersion as the default tag. */}}
{{- define "shardgate.imageRef" -}}
{{- $repo := .image.repository -}}
{{- if .image.registry -}}{{- $repo = printf "%s/%s" .image.registry .image.repository -}}{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (toString (default .ctx.Chart.AppVersion .image.tag)) -}}
{{- end -}}
{{- end -}}

{{- define "shardgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "shardgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "shardgate.redisServiceName" -}}
{{- include "shardgate.componentName" (dict "ctx" . "component" "redis") -}}
{{- end -}}

{{- define "shardgate.partitionHeadlessName" -}}
{{- printf "%s-headless" (include "shardgate.componentName" (dict "ctx" . "component" "partition")) -}}
{{- end -}}

{{/* The Secret holding the Redis URL (external mode) or the Redis password (bundled with auth). */}}
{{- define "shardgate.redisSecretName" -}}
{{- if eq .Values.redis.mode "external" -}}
{{- default (printf "%s-redis-url" (include "shardgate.fullname" .)) .Values.redis.external.existingSecret -}}
{{- else -}}
{{- default (printf "%s-redis-auth" (include "shardgate.fullname" .)) .Values.redis.bundled.auth.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* Whether the chart itself renders secret.yaml. */}}
{{- define "shardgate.createsRedisSecret" -}}
{{- if and (eq .Values.redis.mode "external") (not .Values.redis.external.existingSecret) -}}true
{{- else if and (eq .Values.redis.mode "bundled") .Values.redis.bundled.auth.enabled (not .Values.redis.bundled.auth.existingSecret) -}}true
{{- end -}}
{{- end -}}

{{/*
SHARDGATE_REDIS_URL for a container: from the external URL Secret, or the bundled Redis Service
(with the password from its Secret, expanded by Kubernetes from REDIS_PASSWORD).
*/}}
{{- define "shardgate.redisEnv" -}}
{{- if eq .Values.redis.mode "external" }}
- name: SHARDGATE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "shardgate.redisSecretName" . }}
      key: {{ .Values.redis.external.existingSecretKey }}
{{- else }}
{{- $host := printf "%s.%s.svc.%s" (include "shardgate.redisServiceName" .) .Release.Namespace .Values.clusterDomain }}
{{- if .Values.redis.bundled.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "shardgate.redisSecretName" . }}
      key: {{ .Values.redis.bundled.auth.existingSecretPasswordKey }}
- name: SHARDGATE_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:%v/0" $host .Values.redis.bundled.port | quote }}
{{- else }}
- name: SHARDGATE_REDIS_URL
  value: {{ printf "redis://%s:%v/0" $host .Values.redis.bundled.port | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The settings both processes read, as ConfigMap data lines. */}}
{{- define "shardgate.commonConfig" -}}
SHARDGATE_PARTITIONS: {{ .Values.partitions | quote }}
SHARDGATE_BIND_HOST: {{ .Values.bindHost | quote }}
SHARDGATE_LOG_LEVEL: {{ .Values.logLevel | quote }}
SHARDGATE_LOG_JSON: {{ .Values.logJson | quote }}
SHARDGATE_REDIS_TIMEOUT_S: {{ .Values.redisTimeoutSeconds | quote }}
{{- if .Values.requestIdentity.existingSecret }}
SHARDGATE_REQUEST_IDENTITY_KEY_FILE: {{ printf "/etc/shardgate/identity/%s" .Values.requestIdentity.key | quote }}
{{- end }}
{{- end -}}

{{/* Volumes every shardgate pod has: /tmp, and the request identity key when configured. */}}
{{- define "shardgate.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if .Values.requestIdentity.existingSecret }}
- name: request-identity
  secret:
    secretName: {{ .Values.requestIdentity.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.requestIdentity.key }}
        path: {{ .Values.requestIdentity.key }}
{{- end }}
{{- end -}}

{{- define "shardgate.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.requestIdentity.existingSecret }}
- name: request-identity
  mountPath: /etc/shardgate/identity
  readOnly: true
{{- end }}
{{- end -}}

{{/*
One probe: .custom when not empty, else an httpGet of .path on the named .port with the
thresholds of .probe; nothing when .probe.enabled is false.
*/}}
{{- define "shardgate.probe" -}}
{{- if .custom -}}
{{ toYaml .custom }}
{{- else if .probe.enabled -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
successThreshold: {{ .probe.successThreshold }}
{{- end -}}
{{- end -}}

{{/* Container lifecycle: .hooks when not empty, else a preStop sleep of .sleepSeconds (none for 0). */}}
{{- define "shardgate.lifecycle" -}}
{{- if .hooks }}
lifecycle:
  {{- toYaml .hooks | nindent 2 }}
{{- else if gt (int .sleepSeconds) 0 }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ int .sleepSeconds }}
{{- end }}
{{- end -}}

{{/* topologySpreadConstraints: the component's own list, else one soft constraint per topologySpread key. */}}
{{- define "shardgate.topologySpread" -}}
{{- if .own }}
topologySpreadConstraints:
  {{- toYaml .own | nindent 2 }}
{{- else if .ctx.Values.topologySpread.enabled }}
topologySpreadConstraints:
{{- range .ctx.Values.topologySpread.topologyKeys }}
  - maxSkew: {{ $.ctx.Values.topologySpread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $.ctx.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "shardgate.selectorLabels" (dict "ctx" $.ctx "component" $.component) | nindent 8 }}
    {{- if eq $.component "ingress" }}
    matchLabelKeys:
      - pod-template-hash
    {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod annotations for Prometheus' kubernetes_sd scraping (metrics.scrapeAnnotations). */}}
{{- define "shardgate.scrapeAnnotations" -}}
{{- if .ctx.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* Refuse value combinations that cannot work; called from NOTES.txt and every workload. */}}
{{- define "shardgate.validate" -}}
{{- if gt (int .Values.partition.replicaCount) (int .Values.partitions) -}}
{{- fail (printf "partition.replicaCount (%v) must not exceed partitions (%v): a worker beyond P owns nothing" .Values.partition.replicaCount .Values.partitions) -}}
{{- end -}}
{{- if and .Values.partition.keda.enabled (gt (int .Values.partition.keda.maxReplicas) (int .Values.partitions)) -}}
{{- fail (printf "partition.keda.maxReplicas (%v) must not exceed partitions (%v)" .Values.partition.keda.maxReplicas .Values.partitions) -}}
{{- end -}}
{{- if and (eq .Values.redis.mode "external") (not .Values.redis.external.url) (not .Values.redis.external.existingSecret) -}}
{{- fail "redis.mode=external needs redis.external.existingSecret (a Secret holding the URL) or redis.external.url" -}}
{{- end -}}
{{- if and (eq .Values.redis.mode "bundled") .Values.redis.bundled.auth.enabled (not .Values.redis.bundled.auth.password) (not .Values.redis.bundled.auth.existingSecret) -}}
{{- fail "redis.bundled.auth.enabled needs redis.bundled.auth.existingSecret or redis.bundled.auth.password" -}}
{{- end -}}
{{- end -}}

{{/* NetworkPolicy egress rules of the shardgate pods when allowExternalEgress is false (nothing otherwise). */}}
{{- define "shardgate.netpolEgress" -}}
{{- if not .Values.networkPolicy.allowExternalEgress }}
egress:
  - ports:
      - port: 53
        protocol: UDP
      - port: 53
        protocol: TCP
  - to:
      - podSelector:
          matchLabels:
            {{- include "shardgate.selectorLabels" (dict "ctx" . "component" "partition") | nindent 12 }}
    ports:
      - port: {{ .Values.partition.ports.grpc }}
        protocol: TCP
  {{- if eq .Values.redis.mode "bundled" }}
  - to:
      - podSelector:
          matchLabels:
            {{- include "shardgate.selectorLabels" (dict "ctx" . "component" "redis") | nindent 12 }}
    ports:
      - port: {{ .Values.redis.bundled.port }}
        protocol: TCP
  {{- else }}
  - ports:
      {{- range .Values.redis.external.ports }}
      - port: {{ . }}
        protocol: TCP
      {{- end }}
  {{- end }}
  {{- with .Values.networkPolicy.extraEgress }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- end -}}
