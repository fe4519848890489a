{{/* ------------------------------------------------------------------ names and labels */}}

{{- define "tolk.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped base name; 40 characters leave room for "-translator-metrics" style suffixes. */}}
{{- define "tolk.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* <fullname>-<component>. Context: dict "root" $ "component" "stt". */}}
{{- define "tolk.componentName" -}}
{{- printf "%s-%s" (include "tolk.fullname" .root) .component }}
{{- end }}

{{- define "tolk.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Context: dict "root" $ "component" "stt". */}}
{{- define "tolk.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tolk.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Context: dict "root" $ "component" "stt". */}}
{{- define "tolk.labels" -}}
helm.sh/chart: {{ include "tolk.chart" .root }}
{{ include "tolk.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tolk
{{- end }}

{{- define "tolk.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tolk.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tolk.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* ------------------------------------------------------------------ NATS wiring */}}

{{- define "tolk.natsName" -}}
{{- printf "%s-nats" (include "tolk.fullname" .) }}
{{- end }}

{{- define "tolk.natsUrl" -}}
{{- if .Values.nats.url }}
{{- .Values.nats.url }}
{{- else if .Values.nats.install }}
{{- printf "nats://%s:4222" (include "tolk.natsName" .) }}
{{- else }}
{{- fail "nats.url is required when nats.install=false: set it to your JetStream cluster's client URL, e.g. nats://nats.nats.svc.cluster.local:4222" }}
{{- end }}
{{- end }}

{{/* KEDA's operator runs in its own namespace: a fully qualified host. */}}
{{- define "tolk.natsMonitoringEndpoint" -}}
{{- if .Values.nats.monitoringEndpoint }}
{{- .Values.nats.monitoringEndpoint }}
{{- else if .Values.nats.install }}
{{- printf "%s-headless.%s.svc.%s:8222" (include "tolk.natsName" .) .Release.Namespace .Values.nats.clusterDomain }}
{{- else }}
{{- fail "nats.monitoringEndpoint is required for KEDA (stt.keda / translator.keda) when nats.install=false: the host:port of your NATS HTTP monitoring endpoint, e.g. nats-headless.nats.svc.cluster.local:8222" }}
{{- end }}
{{- end }}

{{- define "tolk.natsAuthSecretName" -}}
{{- default (printf "%s-nats-auth" (include "tolk.fullname" .)) .Values.nats.existingAuthSecret }}
{{- end }}

{{- define "tolk.natsUserAuth" -}}
{{- if or .Values.nats.user .Values.nats.existingAuthSecret }}true{{ end }}
{{- end }}

{{/*
One NATS user per actor with its own permissions (nats/permissions.toml, rendered into
files/nats-permissions.json by `python -m actors.runtime.permissions`): on unless another way to authenticate
is set; with install=false only given an existing Secret of the passwords (your NATS has the same users).
*/}}
{{- define "tolk.natsActorUsers" -}}
{{- $u := .Values.nats.actorUsers }}
{{- if and $u.enabled (not (include "tolk.natsUserAuth" .)) (not .Values.nats.credentials.existingSecret) (or .Values.nats.install $u.existingSecret) }}true{{ end }}
{{- end }}

{{- define "tolk.natsUsersSecretName" -}}
{{- default (printf "%s-nats-users" (include "tolk.fullname" .)) .Values.nats.actorUsers.existingSecret }}
{{- end }}

{{/* user → {publish, subscribe}: the chart's copy of the per-actor grants. */}}
{{- define "tolk.natsPermissions" -}}
{{- .Files.Get "files/nats-permissions.json" }}
{{- end }}

{{/* A Tolk container's own NATS user and password (from the users Secret). Context: dict "root" $ "user" name. */}}
{{- define "tolk.natsUserEnv" -}}
{{- if include "tolk.natsActorUsers" .root }}
- name: TOLK_NATS_USER
  value: {{ .user | quote }}
- name: TOLK_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "tolk.natsUsersSecretName" .root }}
      key: {{ .user }}
{{- end }}
{{- end }}

{{- define "tolk.authSecretName" -}}
{{- default (printf "%s-auth" (include "tolk.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "tolk.apiTokens" -}}
{{- if or .Values.auth.tokens .Values.auth.existingSecret }}true{{ end }}
{{- end }}

{{/*
Deep merge, in place: every key of .src into .dst, maps merged key by key, anything else replaced, false and 0
included (sprig's merge/mergeOverwrite skip those, so a pool could not turn off a default). Context: dict
"dst" "src". Renders nothing.
*/}}
{{- define "tolk.deepMerge" -}}
{{- $dst := .dst }}
{{- range $k, $v := .src }}
{{- if and (kindIs "map" $v) (kindIs "map" (index $dst $k)) }}
{{- include "tolk.deepMerge" (dict "dst" (index $dst $k) "src" $v) }}
{{- else }}
{{- $_ := set $dst $k (deepCopy $v) }}
{{- end }}
{{- end }}
{{- end }}

{{/* TOLK_STT_POOLS from stt.pools: `en=tiny.en:en;multi=base:*` (actors/runtime/pools.py). */}}
{{- define "tolk.sttPools" -}}
{{- $out := list }}
{{- range .Values.stt.pools }}
{{- $out = append $out (printf "%s=%s:%s" .name .model (join "," .languages)) }}
{{- end }}
{{- join ";" $out }}
{{- end }}

{{/* ------------------------------------------------------------------ checks that fail early */}}

{{- define "tolk.validate" -}}
{{- $_ := include "tolk.natsUrl" . }}
{{- if and .Values.nats.credentials.existingSecret (include "tolk.natsUserAuth" .) }}
{{- fail "nats.credentials.existingSecret and nats.user/nats.existingAuthSecret are exclusive: pick one way to authenticate" }}
{{- end }}
{{- if and .Values.nats.user (not .Values.nats.password) (not .Values.nats.existingAuthSecret) }}
{{- fail "nats.password is required with nats.user" }}
{{- end }}
{{- if and .Values.nats.install .Values.nats.credentials.existingSecret }}
{{- fail "nats.credentials (a .creds file) needs an operator-mode NATS; the in-chart NATS supports nats.user/nats.password only" }}
{{- end }}
{{- if and .Values.nats.install (gt (int .Values.nats.jetstreamReplicas) (int .Values.nats.replicas)) }}
{{- fail (printf "nats.jetstreamReplicas (%d) exceeds nats.replicas (%d): JetStream cannot place that many copies" (int .Values.nats.jetstreamReplicas) (int .Values.nats.replicas)) }}
{{- end }}
{{- range $c := list "segmenter" "diarizer" "fanout" }}
{{- $n := int (index $.Values $c "replicas") }}
{{- if or (lt $n 1) (gt $n (int $.Values.topology.partitions)) }}
{{- fail (printf "%s.replicas must be 1..%d (topology.partitions): each replica owns the partitions p %% replicas == index" $c (int $.Values.topology.partitions)) }}
{{- end }}
{{- end }}
{{- if and .Values.models.persistence.enabled (not .Values.models.persistence.existingClaim) (not .Values.models.persistence.accessModes) }}
{{- fail "models.persistence.accessModes must not be empty" }}
{{- end }}
{{- if hasKey .Values.stt "model" }}
{{- fail "stt.model is replaced by stt.pools (TOLK_STT_POOLS): e.g. stt.pools: [{name: default, model: base, languages: [\"*\"]}]" }}
{{- end }}
{{- $names := dict }}
{{- $owner := dict }}
{{- $catchAll := 0 }}
{{- range $pool := .Values.stt.pools }}
{{- if hasKey $names $pool.name }}
{{- fail (printf "stt.pools: the name %s is used twice" $pool.name) }}
{{- end }}
{{- $_ := set $names $pool.name true }}
{{- if and (has "*" $pool.languages) (gt (len $pool.languages) 1) }}
{{- fail (printf "stt.pools: pool %s: \"*\" stands alone (it takes every language no other pool lists)" $pool.name) }}
{{- end }}
{{- range $lang := $pool.languages }}
{{- if eq $lang "*" }}
{{- $catchAll = add1 $catchAll }}
{{- else if hasKey $owner $lang }}
{{- fail (printf "stt.pools: language %s is in pools %s and %s" $lang (index $owner $lang) $pool.name) }}
{{- end }}
{{- $_ := set $owner $lang $pool.name }}
{{- end }}
{{- end }}
{{- if ne $catchAll 1 }}
{{- fail (printf "stt.pools: exactly one pool must have languages [\"*\"] (every other language, and auto); found %d" $catchAll) }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ container pieces */}}

{{/* Env every Tolk container gets: NATS connection, credentials, log level. Context: root. */}}
{{- define "tolk.commonEnv" -}}
- name: TOLK_NATS_URL
  value: {{ include "tolk.natsUrl" . | quote }}
- name: TOLK_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- /* Every actor reads the pools the same way: the segmenter routes by them, the edge sheds by them, the
       topology Job declares their durables, the exporter reports them. */}}
- name: TOLK_STT_POOLS
  value: {{ include "tolk.sttPools" . | quote }}
{{- /* Where the transient streams live, and their replicas: the topology Job creates them so, and the exporter
       re-creates them so should they be gone (docs/operations.md#durability). */}}
- name: TOLK_NATS_TRANSIENT_STORAGE
  value: {{ .Values.nats.transientStorage | quote }}
- name: TOLK_NATS_REPLICAS
  value: {{ .Values.nats.jetstreamReplicas | toString | quote }}
{{- /* The root filesystem is read-only: caches (assembled Whisper base, Hugging Face, Silero) go to /tmp. */}}
- name: HOME
  value: /tmp
{{- if .Values.nats.credentials.existingSecret }}
- name: TOLK_NATS_CREDS
  value: /etc/tolk/nats.creds
{{- end }}
{{- if include "tolk.natsUserAuth" . }}
- name: TOLK_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ include "tolk.natsAuthSecretName" . }}
      key: user
- name: TOLK_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "tolk.natsAuthSecretName" . }}
      key: password
{{- end }}
{{- end }}

{{/*
/etc/tolk as one projected volume: channels.json (when the pod reads channels) and nats.creds (when
configured). Projected, not subPath, so ConfigMap/Secret updates reach running pods.
Context: dict "root" $ "channels" bool. Renders nothing when neither applies.
*/}}
{{- define "tolk.configVolume" -}}
{{- $root := .root }}
{{- if or .channels $root.Values.nats.credentials.existingSecret }}
- name: tolk-config
  projected:
    defaultMode: 0440
    sources:
      {{- if .channels }}
      - configMap:
          name: {{ include "tolk.componentName" (dict "root" $root "component" "channels") }}
          items:
            - key: channels.json
              path: channels.json
      {{- end }}
      {{- if $root.Values.nats.credentials.existingSecret }}
      - secret:
          name: {{ $root.Values.nats.credentials.existingSecret }}
          items:
            - key: {{ $root.Values.nats.credentials.key }}
              path: nats.creds
      {{- end }}
{{- end }}
{{- end }}

{{- define "tolk.configVolumeMount" -}}
{{- if or .channels .root.Values.nats.credentials.existingSecret }}
- name: tolk-config
  mountPath: /etc/tolk
  readOnly: true
{{- end }}
{{- end }}

{{- define "tolk.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  {{- toYaml .root.Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  {{- toYaml .root.Values.probes.readiness | nindent 2 }}
{{- end }}

{{/*
The pod template every actor shares.
Context: dict
  root       $
  component  the workload's name and label (stt: stt-<pool>)
  actor      (optional) the actor: container name and NATS user (default: component)
  cfg        the actor's values block
  args       list: the tolk CLI arguments
  port       container port serving /metrics, /healthz, /readyz (8080 edge, metrics.port otherwise)
  portName   "http" or "metrics"
  env        (optional) YAML list of actor-specific EnvVars
  volumes, volumeMounts  (optional) YAML lists
  channels   (optional) bool: mount /etc/tolk/channels.json
  resources, nodeSelector, tolerations, runtimeClassName  (optional) overrides of cfg's
  annotations (optional) dict: extra pod annotations (config checksums)
*/}}
{{- define "tolk.podTemplate" -}}
{{- $root := .root }}
{{- $cfg := .cfg }}
{{- $ctx := dict "root" $root "component" .component }}
{{- $podAnnotations := merge (dict) (.annotations | default dict) ($cfg.podAnnotations | default dict) }}
{{- if $root.Values.metrics.podAnnotations }}
{{- $_ := set $podAnnotations "prometheus.io/scrape" "true" }}
{{- $_ := set $podAnnotations "prometheus.io/port" (toString .port) }}
{{- $_ := set $podAnnotations "prometheus.io/path" "/metrics" }}
{{- end }}
{{- $resources := .resources | default $cfg.resources }}
{{- $nodeSelector := .nodeSelector | default $cfg.nodeSelector }}
{{- $tolerations := .tolerations | default $cfg.tolerations -}}
metadata:
  labels:
    {{- include "tolk.labels" $ctx | nindent 4 }}
    {{- with $cfg.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "tolk.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $root.Values.automountServiceAccountToken }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ $cfg.terminationGracePeriodSeconds | default 30 }}
  {{- with $nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .actor | default .component }}
      image: {{ .image | default (include "tolk.image" $root) }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command: ["tolk"]
      args:
        {{- toYaml .args | nindent 8 }}
      ports:
        - name: {{ .portName }}
          containerPort: {{ .port }}
          protocol: TCP
      env:
        {{- include "tolk.commonEnv" $root | nindent 8 }}
        {{- with include "tolk.natsUserEnv" (dict "root" $root "user" (.actor | default .component)) | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- if eq .portName "metrics" }}
        - name: TOLK_METRICS_PORT
          value: {{ .port | quote }}
        {{- end }}
        {{- with trim (.env | default "") }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $cfg.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- include "tolk.probes" (dict "root" $root "port" .port) | nindent 6 }}
      {{- with $resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- with include "tolk.configVolumeMount" (dict "root" $root "channels" .channels) | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with trim (.volumeMounts | default "") }}
        {{- . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ $root.Values.tmp.sizeLimit }}
    {{- with include "tolk.configVolume" (dict "root" $root "channels" .channels) | trim }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with trim (.volumes | default "") }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* storageClassName: "" unset (cluster default), "-" → "" (no dynamic provisioning), else the name. */}}
{{- define "tolk.storageClass" -}}
{{- if eq . "-" }}
storageClassName: ""
{{- else if . }}
storageClassName: {{ . | quote }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ models */}}

{{- define "tolk.modelsClaimName" -}}
{{- default (printf "%s-models" (include "tolk.fullname" .)) .Values.models.persistence.existingClaim }}
{{- end }}

{{/* TOLK_MODEL_CACHE for stt/translator: the PVC's cache dir, or models.cacheDir, or unset (image-baked). */}}
{{- define "tolk.modelCacheEnv" -}}
{{- if .Values.models.persistence.enabled }}
- name: TOLK_MODEL_CACHE
  value: /models/cache
{{- else if .Values.models.cacheDir }}
- name: TOLK_MODEL_CACHE
  value: {{ .Values.models.cacheDir | quote }}
{{- end }}
{{- end }}

{{- define "tolk.modelsVolume" -}}
{{- if .Values.models.persistence.enabled }}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "tolk.modelsClaimName" . }}
    readOnly: {{ .Values.models.persistence.readOnly }}
{{- end }}
{{- end }}

{{- define "tolk.modelsVolumeMount" -}}
{{- if .Values.models.persistence.enabled }}
- name: models
  mountPath: /models
  readOnly: {{ .Values.models.persistence.readOnly }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ shared objects */}}

{{/* Headless Service per non-edge actor: StatefulSet serviceName, and the ServiceMonitor's target. */}}
{{- define "tolk.metricsService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "tolk.componentName" . }}
  labels:
    {{- include "tolk.labels" . | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "tolk.selectorLabels" . | nindent 4 }}
  ports:
    - name: metrics
      port: {{ .root.Values.metrics.port }}
      targetPort: metrics
      protocol: TCP
{{- end }}

{{/* HPA unless KEDA owns the scaling. Context: dict "root" "component" "cfg". */}}
{{- define "tolk.hpa" -}}
{{- $cfg := .cfg }}
{{- if and $cfg.autoscaling $cfg.autoscaling.enabled (not (and $cfg.keda $cfg.keda.enabled)) }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "tolk.componentName" . }}
  labels:
    {{- include "tolk.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "tolk.componentName" . }}
  minReplicas: {{ $cfg.autoscaling.minReplicas }}
  maxReplicas: {{ $cfg.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $cfg.autoscaling.targetCPUUtilizationPercentage }}
  {{- with $cfg.autoscaling.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* KEDA ScaledObject on JetStream consumer lag. Context: dict "root" "component" "cfg". */}}
{{- define "tolk.scaledObject" -}}
{{- $keda := .cfg.keda }}
{{- if and $keda $keda.enabled }}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ include "tolk.componentName" . }}
  labels:
    {{- include "tolk.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "tolk.componentName" . }}
  pollingInterval: {{ $keda.pollingInterval }}
  cooldownPeriod: {{ $keda.cooldownPeriod }}
  minReplicaCount: {{ $keda.minReplicaCount }}
  maxReplicaCount: {{ $keda.maxReplicaCount }}
  {{- with $keda.behavior }}
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        {{- toYaml . | nindent 8 }}
  {{- end }}
  triggers:
    - type: nats-jetstream
      metadata:
        natsServerMonitoringEndpoint: {{ include "tolk.natsMonitoringEndpoint" .root | quote }}
        account: "$G"
        stream: {{ $keda.stream | quote }}
        consumer: {{ $keda.consumer | quote }}
        lagThreshold: {{ $keda.lagThreshold | toString | quote }}
        {{- with $keda.activationLagThreshold }}
        activationLagThreshold: {{ . | toString | quote }}
        {{- end }}
    {{- with $keda.extraTriggers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}
{{- end }}

{{/* Context: dict "root" "component" "cfg". */}}
{{- define "tolk.pdb" -}}
{{- if and .cfg.pdb .cfg.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "tolk.componentName" . }}
  labels:
    {{- include "tolk.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .cfg.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "tolk.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}
