{{/* Names, labels and the settings every infermesh service gets. */}}

{{/* "<release>-<component>", the name of every object of a component. */}}
{{- define "infermesh.name" -}}
{{- printf "%s-%s" .root.Release.Name .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "infermesh.selectorLabels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "infermesh.labels" -}}
{{ include "infermesh.selectorLabels" . }}
app.kubernetes.io/part-of: infermesh
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The four services: values key -> component name (its Consul name too) and settings prefix. */}}
{{- define "infermesh.services" -}}
modelGateway: {name: model-gateway, prefix: MODEL_GATEWAY_, dataDir: /var/lib/infermesh/model-gateway}
dataGateway: {name: data-gateway, prefix: DATA_GATEWAY_, dataDir: /var/lib/infermesh/data-gateway}
bizCenter: {name: biz-center, prefix: BIZ_CENTER_, dataDir: /var/lib/infermesh/biz-center}
monitor: {name: monitor, prefix: MONITOR_, dataDir: /var/lib/infermesh/monitor}
{{- end -}}

{{- define "infermesh.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag -}}
{{- printf "%s%s:%s" .root.Values.image.registry .image.repository $tag -}}
{{- end -}}

{{- define "infermesh.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-infermesh" .Release.Name) -}}
{{- end -}}

{{/* Whether the service keeps state on a volume of its own, and so runs as a StatefulSet. */}}
{{- define "infermesh.stateful" -}}
{{- if eq .key "monitor" -}}true
{{- else if and (eq .key "modelGateway") (not (include "infermesh.sharedRegistry" .root)) -}}true
{{- end -}}
{{- end -}}

{{/* Whether the model gateways share a registry (PostgreSQL) rather than each keeping SQLite. */}}
{{- define "infermesh.sharedRegistry" -}}
{{- if or .Values.secrets.modelGatewayRegistryUrl .Values.services.modelGateway.sharedRegistry -}}true{{- end -}}
{{- end -}}

{{/* Worker processes: the value, else the CPU limit rounded up, else "auto". */}}
{{- define "infermesh.workers" -}}
{{- $workers := toString (.grpc.workers | default "") -}}
{{- $cpu := toString (dig "limits" "cpu" "" .resources) -}}
{{- if $workers -}}{{ $workers }}
{{- else if hasSuffix "m" $cpu -}}{{ max 1 (int (ceil (divf (float64 (trimSuffix "m" $cpu)) 1000))) }}
{{- else if $cpu -}}{{ max 1 (int (ceil (float64 $cpu))) }}
{{- else -}}auto
{{- end -}}
{{- end -}}

{{- define "infermesh.consulAddress" -}}
{{- .Values.consulAddress | default "http://$(HOST_IP):8500" -}}
{{- end -}}

{{/* The pod's own addresses, for Consul: the agent of its node, and the address it registers. */}}
{{- define "infermesh.downwardEnv" -}}
- name: HOST_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}

{{/* Settings of one service, in its environment (the names docker-compose.yml uses). */}}
{{- define "infermesh.serviceEnv" -}}
{{- $root := .root -}}
{{- $p := .meta.prefix -}}
{{- $svc := .svc -}}
{{- $secret := include "infermesh.secretName" $root -}}
{{ include "infermesh.downwardEnv" . }}
- name: {{ $p }}GRPC__HOST
  value: 0.0.0.0
- name: {{ $p }}GRPC__PORT
  value: {{ $svc.grpc.port | quote }}
- name: {{ $p }}GRPC__ADVERTISE_HOST
  value: $(POD_IP)
- name: {{ $p }}GRPC__WORKERS
  {{- /* The monitor is one process (its real-time windows and chdb path live in it); it refuses more. */}}
  value: {{ if eq .key "monitor" }}"1"{{ else }}{{ include "infermesh.workers" $svc | quote }}{{ end }}
- name: {{ $p }}GRPC__GRACE_PERIOD_S
  value: {{ $svc.grpc.gracePeriodSeconds | quote }}
- name: {{ $p }}METRICS__HOST
  value: 0.0.0.0
- name: {{ $p }}METRICS__PORT
  value: {{ $svc.metricsPort | quote }}
- name: {{ $p }}DISCOVERY__BACKEND
  value: consul
- name: {{ $p }}DISCOVERY__CONSUL_ADDR
  value: {{ include "infermesh.consulAddress" $root | quote }}
- name: {{ $p }}EVENTS__TRANSPORT
  value: nats
- name: {{ $p }}EVENTS__NATS_URL
  value: {{ printf "nats://%s:4222" (include "infermesh.name" (dict "root" $root "component" "nats")) | quote }}
- name: {{ $p }}EVENTS__SPOOL_DIR
  value: {{ printf "%s/spool" .meta.dataDir | quote }}
- name: {{ $p }}EVENTS__UNIT_ID_HASH_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: unit-id-hash-key
- name: {{ $p }}TRACING__ENDPOINT
  value: {{ $root.Values.tracing.endpoint | default (printf "%s:%v" (include "infermesh.name" (dict "root" $root "component" "monitor")) $root.Values.services.monitor.grpc.port) | quote }}
- name: {{ $p }}TRACING__SAMPLE_RATIO
  value: {{ $root.Values.tracing.sampleRatio | quote }}
{{- if eq .key "modelGateway" }}
- name: MODEL_GATEWAY_DATA_DIR
  value: {{ .meta.dataDir | quote }}
- name: MODEL_GATEWAY_WORKERS__EMBEDDED
  value: "0"
- name: MODEL_GATEWAY_WORKERS__DISCOVERY_SERVICE
  value: triton
{{- if not (include "infermesh.stateful" .) }}
- name: MODEL_GATEWAY_REGISTRY_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: model-gateway-registry-url
{{- end }}
{{- else if eq .key "dataGateway" }}
- name: DATA_GATEWAY_STATE_DIR
  value: {{ .meta.dataDir | quote }}
- name: DATA_GATEWAY_NATS__URL
  value: {{ printf "nats://%s:4222" (include "infermesh.name" (dict "root" $root "component" "nats")) | quote }}
{{- else if eq .key "bizCenter" }}
- name: BIZ_CENTER_THRIFT__HOST
  value: 0.0.0.0
- name: BIZ_CENTER_THRIFT__PORT
  value: {{ $svc.thriftPort | quote }}
- name: BIZ_CENTER_CONFIG__STORE_PATH
  value: {{ printf "%s/config.db" .meta.dataDir | quote }}
{{- if $svc.seed }}
- name: BIZ_CENTER_CONFIG__SEED_FILE
  value: /etc/infermesh/biz-center/seed.yaml
{{- end }}
- name: BIZ_CENTER_RATE_LIMIT__REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "infermesh.name" (dict "root" $root "component" "redis")) | quote }}
- name: BIZ_CENTER_AUTH__API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: biz-center-api-keys
      optional: true
{{- else if eq .key "monitor" }}
- name: MONITOR_INGEST__NATS_ENABLED
  value: "true"
- name: MONITOR_STORAGE__BACKEND
  value: {{ $svc.storageBackend | quote }}
{{- if eq $svc.storageBackend "clickhouse" }}
- name: MONITOR_STORAGE__CLICKHOUSE_URL
  value: {{ printf "http://%s:8123" (include "infermesh.name" (dict "root" $root "component" "clickhouse")) | quote }}
- name: MONITOR_STORAGE__CLICKHOUSE_USER
  value: {{ $root.Values.clickhouse.user | quote }}
- name: MONITOR_STORAGE__CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: clickhouse-password
- name: MONITOR_STORAGE__DATABASE
  value: {{ $root.Values.clickhouse.database | quote }}
{{- else }}
- name: MONITOR_STORAGE__CHDB_PATH
  value: {{ printf "%s/chdb" .meta.dataDir | quote }}
{{- end }}
{{- end }}
{{- with $svc.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy peers. */}}
{{- define "infermesh.peer" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ .component }}
      app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{- define "infermesh.meshPeer" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/part-of: infermesh
      app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "infermesh.consulPeer" -}}
{{- if .Values.consul.enabled }}
- podSelector:
    matchLabels:
      app: consul
      component: client
      release: {{ .Release.Name }}
{{- end }}
{{- with .Values.networkPolicy.consulFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "infermesh.prometheusPeer" -}}
- {{- toYaml .Values.networkPolicy.prometheus | nindent 2 }}
{{- end }}
