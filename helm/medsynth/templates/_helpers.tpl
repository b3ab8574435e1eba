{{/* Names and labels. */}}
{{- define "medsynth.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "medsynth.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "api") */}}
{{- define "medsynth.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Whether a component runs on the GPU pool: (dict "root" $ "component" "trainer") */}}
{{- define "medsynth.onGpu" -}}
{{- if and .root.Values.gpu.enabled (index .root.Values.services .component).gpu -}}true{{- end -}}
{{- end -}}

{{/* An image: (dict "root" $ "name" "trainer" "gpu" true "override" $svc.image). The default is
<registry><image.repository>/<name>:<tag>[gpu.imageSuffix]; a service's image.repository replaces
<image.repository>/<name> (the registry is still put before it) and its image.tag is used as it is. */}}
{{- define "medsynth.image" -}}
{{- $o := .override | default dict -}}
{{- $repository := $o.repository | default (printf "%s/%s" .root.Values.image.repository .name) -}}
{{- $suffix := ternary .root.Values.gpu.imageSuffix "" (eq (toString .gpu) "true") -}}
{{- $tag := $o.tag | default (printf "%s%s" (default .root.Chart.AppVersion .root.Values.image.tag) $suffix) -}}
{{- printf "%s%s:%s" .root.Values.image.registry $repository $tag -}}
{{- end -}}

{{/* Whether a service is deployed: every one unless `enabled: false` (workers). */}}
{{- define "medsynth.enabled" -}}
{{- if ne (toString .enabled) "false" -}}true{{- end -}}
{{- end -}}

{{- define "medsynth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ .Values.serviceAccount.name | default (include "medsynth.fullname" .) }}{{- else -}}{{ .Values.serviceAccount.name | default "default" }}{{- end -}}
{{- end -}}

{{/* Whether the cluster serves an API: (dict "root" $ "api" "keda.sh/v1alpha1" "kind" "ScaledObject"). Helm fills
.Capabilities.APIVersions from the cluster on install/upgrade (`helm template`: from --api-versions). */}}
{{- define "medsynth.hasApi" -}}
{{- if or (.root.Capabilities.APIVersions.Has (printf "%s/%s" .api .kind)) (.root.Capabilities.APIVersions.Has .api) -}}true{{- end -}}
{{- end -}}

{{/* The workers' autoscaler: keda, hpa or none. auto: KEDA where the cluster has its CRDs, an HPA otherwise. */}}
{{- define "medsynth.autoscaler" -}}
{{- $mode := toString .Values.autoscaling.mode -}}
{{- if eq $mode "auto" -}}
{{- ternary "keda" "hpa" (eq (include "medsynth.hasApi" (dict "root" . "api" "keda.sh/v1alpha1" "kind" "ScaledObject")) "true") -}}
{{- else if has $mode (list "keda" "hpa" "none") -}}
{{- $mode -}}
{{- else -}}
{{- fail (printf "autoscaling.mode must be auto, keda, hpa or none, not %q" $mode) -}}
{{- end -}}
{{- end -}}

{{/* Whether a Prometheus Operator object is rendered: (dict "root" $ "enabled" $m.serviceMonitor.enabled "kind" "ServiceMonitor").
auto: where the cluster serves monitoring.coreos.com/v1; true: always; false: never. */}}
{{- define "medsynth.monitoringOn" -}}
{{- $on := toString .enabled -}}
{{- if eq $on "true" -}}true
{{- else if eq $on "auto" -}}{{ include "medsynth.hasApi" (dict "root" .root "api" "monitoring.coreos.com/v1" "kind" .kind) }}
{{- end -}}
{{- end -}}

{{/* Each job kind is consumed by exactly one deployed worker: by none, its jobs would wait forever; by two,
each would run every job of it (each worker is its own consumer group). */}}
{{- define "medsynth.checkKinds" -}}
{{- $owners := dict -}}
{{- range $name, $svc := .Values.services -}}
{{- if and $svc.kinds (include "medsynth.enabled" $svc) -}}
{{- range $kind := $svc.kinds -}}
{{- if hasKey $owners $kind -}}
{{- fail (printf "services: both %s and %s consume %s; each job kind belongs to one worker (e.g. trainer.kinds: [train-generator] beside the preparer)" (get $owners $kind) $name $kind) -}}
{{- end -}}
{{- $_ := set $owners $kind $name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $kind := list "prepare-dataset" "train-generator" "sample-cohort" "train-segmenter" "evaluate" -}}
{{- if not (hasKey $owners $kind) -}}
{{- fail (printf "services: no deployed worker consumes %s, so its jobs would never run (with services.preparer.enabled=false, give the trainer kinds [prepare-dataset, train-generator])" $kind) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "medsynth.kafkaBootstrap" -}}
{{- if .Values.kafka.deploy -}}{{ include "medsynth.fullname" . }}-kafka:9092{{- else -}}{{ required "kafka.bootstrap: the brokers' host:port" .Values.kafka.bootstrap }}{{- end -}}
{{- end -}}

{{- define "medsynth.storeEndpoint" -}}
{{- if .Values.store.deploy -}}{{ include "medsynth.fullname" . }}-minio:9000{{- else -}}{{ required "store.endpoint: the S3 server's host:port" .Values.store.endpoint }}{{- end -}}
{{- end -}}

{{/* The settings every medsynth container reads (medsynth.core.settings), secrets by reference. */}}
{{- define "medsynth.env" -}}
{{- $k := .Values.kafka.security -}}
{{- $sasl := has $k.protocol (list "SASL_PLAINTEXT" "SASL_SSL") -}}
{{- $tls := has $k.protocol (list "SSL" "SASL_SSL") -}}
- name: MEDSYNTH_ENVIRONMENT
  value: production
- name: MEDSYNTH_HOME
  value: /var/lib/medsynth
- name: MEDSYNTH_HTTP_HOST
  value: 0.0.0.0
- name: MEDSYNTH_HTTP_PORT
  value: "8000"
- name: MEDSYNTH_STORE
  value: s3
- name: MEDSYNTH_S3_ENDPOINT
  value: {{ include "medsynth.storeEndpoint" . | quote }}
- name: MEDSYNTH_S3_BUCKET
  value: {{ .Values.store.bucket | quote }}
- name: MEDSYNTH_S3_SECURE
  value: {{ .Values.store.secure | quote }}
- name: MEDSYNTH_S3_REGION
  value: {{ .Values.store.region | quote }}
{{- if include "medsynth.storeCa" . }}
- name: MEDSYNTH_S3_CA_BUNDLE
  value: /etc/medsynth/s3-ca/ca.crt
{{- end }}
- name: MEDSYNTH_KAFKA_BOOTSTRAP
  value: {{ include "medsynth.kafkaBootstrap" . | quote }}
- name: MEDSYNTH_TOPIC_PREFIX
  value: {{ .Values.kafka.topicPrefix | quote }}
- name: MEDSYNTH_KAFKA_SECURITY_PROTOCOL
  value: {{ $k.protocol | quote }}
{{- if $sasl }}
- name: MEDSYNTH_KAFKA_SASL_MECHANISM
  value: {{ $k.sasl.mechanism | quote }}
- name: MEDSYNTH_KAFKA_SASL_USERNAME
  value: {{ required "kafka.security.sasl.username: the SASL user" $k.sasl.username | quote }}
- name: MEDSYNTH_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.security.sasl.passwordSecret.name: the Secret with the SASL password" $k.sasl.passwordSecret.name }}
      key: {{ $k.sasl.passwordSecret.key }}
{{- end }}
{{- if $tls }}
{{- if include "medsynth.kafkaCa" . }}
- name: MEDSYNTH_KAFKA_SSL_CAFILE
  value: /etc/medsynth/kafka-ca/ca.crt
{{- end }}
{{- if $k.tls.clientCert.secret }}
- name: MEDSYNTH_KAFKA_SSL_CERTFILE
  value: /etc/medsynth/kafka-client/tls.crt
- name: MEDSYNTH_KAFKA_SSL_KEYFILE
  value: /etc/medsynth/kafka-client/tls.key
{{- end }}
- name: MEDSYNTH_KAFKA_SSL_CHECK_HOSTNAME
  value: {{ $k.tls.checkHostname | quote }}
{{- end }}
- name: HOME
  value: /tmp
{{- range $key := list "MEDSYNTH_S3_ACCESS_KEY" "MEDSYNTH_S3_SECRET_KEY" "MEDSYNTH_METRICS_TOKEN" }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ required "existingSecret: the Secret with the store keys and the metrics token" $.Values.existingSecret }}
      key: {{ $key }}
{{- end }}
{{- range $key, $value := .Values.settings }}
- name: {{ $key }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* The CA bundles given (a Secret or a ConfigMap), as volume sources; empty when none. */}}
{{- define "medsynth.kafkaCa" -}}
{{- $k := .Values.kafka.security -}}
{{- if and (has $k.protocol (list "SSL" "SASL_SSL")) (or $k.tls.ca.secret $k.tls.ca.configMap) -}}
{{- include "medsynth.caSource" $k.tls.ca -}}
{{- end -}}
{{- end -}}

{{- define "medsynth.storeCa" -}}
{{- if or .Values.store.ca.secret .Values.store.ca.configMap -}}
{{- if not .Values.store.secure -}}{{ fail "store.ca is for https: set store.secure=true" }}{{- end -}}
{{- include "medsynth.caSource" .Values.store.ca -}}
{{- end -}}
{{- end -}}

{{- define "medsynth.caSource" -}}
{{- if and .secret .configMap -}}{{ fail "a CA bundle comes from a Secret or a ConfigMap, not both" }}{{- end -}}
{{- if .secret }}
secret:
  secretName: {{ .secret }}
  defaultMode: 0444
  items: [{key: {{ .key }}, path: ca.crt}]
{{- else }}
configMap:
  name: {{ .configMap }}
  defaultMode: 0444
  items: [{key: {{ .key }}, path: ca.crt}]
{{- end }}
{{- end -}}

{{/* A medsynth container's env after the chart's own: extraEnv, global then the service's (a later one wins). */}}
{{- define "medsynth.extraEnv" -}}
{{- with concat (.root.Values.extraEnv | default list) (.svc.extraEnv | default list) }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{- define "medsynth.envFrom" -}}
{{- with concat (.root.Values.extraEnvFrom | default list) (.svc.extraEnvFrom | default list) -}}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* Pod metadata of a component: (dict "root" $ "component" "api" "svc" $svc). */}}
{{- define "medsynth.podMetadata" -}}
labels:
  {{- include "medsynth.labels" .root | nindent 2 }}
  app.kubernetes.io/component: {{ .component }}
  {{- with merge (deepCopy (.svc.podLabels | default dict)) (.root.Values.podLabels | default dict) }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  kubectl.kubernetes.io/default-container: {{ .component }}
  {{- with merge (deepCopy (.svc.podAnnotations | default dict)) (.root.Values.podAnnotations | default dict) }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* Pod-level settings every medsynth pod shares: service account, pull secrets, security context. */}}
{{- define "medsynth.podCommon" -}}
serviceAccountName: {{ include "medsynth.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Writable places under a read-only root filesystem, the CA bundles and client certificate, and the
extra volumes (global, then the service's): (dict "root" $ "svc" $svc). */}}
{{- define "medsynth.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /var/lib/medsynth
{{- if include "medsynth.kafkaCa" .root }}
- {name: kafka-ca, mountPath: /etc/medsynth/kafka-ca, readOnly: true}
{{- end }}
{{- if and (has .root.Values.kafka.security.protocol (list "SSL" "SASL_SSL")) .root.Values.kafka.security.tls.clientCert.secret }}
- {name: kafka-client, mountPath: /etc/medsynth/kafka-client, readOnly: true}
{{- end }}
{{- if include "medsynth.storeCa" .root }}
- {name: s3-ca, mountPath: /etc/medsynth/s3-ca, readOnly: true}
{{- end }}
{{- with .root.Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- with .svc.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "medsynth.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- with include "medsynth.kafkaCa" .root }}
- name: kafka-ca
  {{- . | nindent 2 }}
{{- end }}
{{- $client := .root.Values.kafka.security.tls.clientCert }}
{{- if and (has .root.Values.kafka.security.protocol (list "SSL" "SASL_SSL")) $client.secret }}
- name: kafka-client
  secret:
    secretName: {{ $client.secret }}
    defaultMode: 0440
    items: [{key: {{ $client.certKey }}, path: tls.crt}, {key: {{ $client.keyKey }}, path: tls.key}]
{{- end }}
{{- with include "medsynth.storeCa" .root }}
- name: s3-ca
  {{- . | nindent 2 }}
{{- end }}
{{- with .root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- with .svc.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Scheduling of a component's pods: the GPU pool for GPU stages, the default pool otherwise. */}}
{{- define "medsynth.scheduling" -}}
{{- if eq (include "medsynth.onGpu" .) "true" }}
{{- with .root.Values.gpu.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.gpu.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- else }}
{{- with .root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- with .root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "medsynth.httpProbes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* The worker components (those that consume command topics). */}}
{{- define "medsynth.workers" -}}
{{- range $name, $svc := .Values.services }}{{ if $svc.kinds }}{{ $name }} {{ end }}{{ end -}}
{{- end -}}

{{/* PyTorch threads for a container: its CPU request rounded up (500m -> 1, "2" -> 2). Without it PyTorch
starts a thread per node core in every pod, and pods sharing a node spin against each other. */}}
{{- define "medsynth.torchThreads" -}}
{{- $cpu := toString (default "1" .requests.cpu) -}}
{{- if hasSuffix "m" $cpu -}}
{{- max 1 (div (add (trimSuffix "m" $cpu | atoi) 999) 1000) -}}
{{- else -}}
{{- $cpu | float64 | ceil | int -}}
{{- end -}}
{{- end }}
