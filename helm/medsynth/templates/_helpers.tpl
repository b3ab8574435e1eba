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

{{/* An image: (dict "root" $ "name" "trainer" "gpu" true) */}}
{{- define "medsynth.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag -}}
{{- printf "%smedsynth/%s:%s%s" .root.Values.image.registry .name $tag (ternary .root.Values.gpu.imageSuffix "" (eq (toString .gpu) "true")) -}}
{{- end -}}

{{- define "medsynth.kafkaBootstrap" -}}
{{- if .Values.kafka.deploy -}}{{ include "medsynth.fullname" . }}-kafka:9092{{- else -}}{{ required "kafka.bootstrap: the brokers' host:port" .Values.kafka.bootstrap }}{{- end -}}
{{- end -}}

{{- define "medsynth.storeEndpoint" -}}
{{- if .Values.store.deploy -}}{{ include "medsynth.fullname" . }}-minio:9000{{- else -}}{{ required "store.endpoint: the S3 server's host:port" .Values.store.endpoint }}{{- end -}}
{{- end -}}

{{/* The settings every medsynth container reads (medsynth.core.settings), secrets by reference. */}}
{{- define "medsynth.env" -}}
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
- name: MEDSYNTH_KAFKA_BOOTSTRAP
  value: {{ include "medsynth.kafkaBootstrap" . | quote }}
- name: MEDSYNTH_TOPIC_PREFIX
  value: {{ .Values.kafka.topicPrefix | quote }}
- name: MEDSYNTH_DEVICE
  value: auto
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

{{/* Writable places under a read-only root filesystem. */}}
{{- define "medsynth.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /var/lib/medsynth
{{- end -}}

{{- define "medsynth.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
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
