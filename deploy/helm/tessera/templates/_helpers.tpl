{{/* Names, labels and the checks every install runs before anything is made. */}}

{{- define "tessera.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tessera.fullname" -}}
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

{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tessera.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tessera.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tessera.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tessera.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: give the existing service account's name when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tessera.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The ConfigMap each config file comes from ("" when there is none): the one named in
values, else the chart's own when it has content. */}}
{{- define "tessera.migConfigMap" -}}
{{- if .Values.mig.config.name }}{{ .Values.mig.config.name }}
{{- else if .Values.mig.config.default }}{{ include "tessera.fullname" . }}-mig-config
{{- end }}
{{- end }}

{{- define "tessera.pluginConfigMap" -}}
{{- if .Values.devicePlugin.config.name }}{{ .Values.devicePlugin.config.name }}
{{- else if .Values.devicePlugin.config.map }}{{ include "tessera.fullname" . }}-plugin-configs
{{- end }}
{{- end }}

{{- define "tessera.countersConfigMap" -}}
{{- if .Values.metrics.counters.name }}{{ .Values.metrics.counters.name }}
{{- else if .Values.metrics.counters.csv }}{{ include "tessera.fullname" . }}-counters
{{- end }}
{{- end }}

{{/* A device plugin config's text: a string as written, a mapping as YAML. */}}
{{- define "tessera.configText" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toYaml . }}{{ end }}
{{- end }}

{{/* Mistakes the schema cannot see, each failing the install with what to change. */}}
{{- define "tessera.validate" -}}
{{- $plugin := .Values.devicePlugin.config }}
{{- if and $plugin.name $plugin.map }}
{{- fail "devicePlugin.config: set either name (an existing ConfigMap) or map (configs in values), not both" }}
{{- end }}
{{- if and $plugin.map $plugin.default (not (hasKey $plugin.map $plugin.default)) }}
{{- fail (printf "devicePlugin.config.default: %q is not one of the configs in devicePlugin.config.map (%s)" $plugin.default (keys $plugin.map | sortAlpha | join ", ")) }}
{{- end }}
{{- range $name, $config := $plugin.map }}
{{- $parsed := include "tessera.configText" $config | fromYaml }}
{{- if hasKey $parsed "Error" }}
{{- fail (printf "devicePlugin.config.map.%s: not valid YAML: %s" $name $parsed.Error) }}
{{- end }}
{{- $sharing := get $parsed "sharing" }}
{{- if and (kindIs "map" $sharing) (get $sharing "mps") (not $.Values.mps.enabled) }}
{{- fail (printf "devicePlugin.config.map.%s shares GPUs with MPS: set mps.enabled=true so the agent gets the MPS root and /dev/shm it needs" $name) }}
{{- end }}
{{- end }}
{{- if and (not .Values.mig.config.name) .Values.mig.config.default }}
{{- $mig := fromYaml .Values.mig.config.default }}
{{- if not (and (kindIs "map" $mig) (hasKey $mig "mig-configs") (kindIs "map" (index $mig "mig-configs"))) }}
{{- fail "mig.config.default: expected a mig-parted v1 file (version: v1, mig-configs: …). To choose the config of nodes without the nvidia.com/mig.config label, set mig.defaultConfig instead" }}
{{- end }}
{{- $names := index $mig "mig-configs" }}
{{- if and .Values.mig.defaultConfig (not (hasKey $names .Values.mig.defaultConfig)) }}
{{- fail (printf "mig.defaultConfig: %q is not one of the configs in mig.config.default (%s)" .Values.mig.defaultConfig (keys $names | sortAlpha | join ", ")) }}
{{- end }}
{{- end }}
{{- if and .Values.admissionPolicy.enabled (semverCompare "<1.30.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "admissionPolicy.enabled needs Kubernetes 1.30 or later (ValidatingAdmissionPolicy v1 and the node-name claim of service account tokens); this cluster is %s: set admissionPolicy.enabled=false" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if and .Values.dra.enabled .Values.dra.nodeSelector .Values.affinity (get .Values.affinity "nodeAffinity") }}
{{- fail "dra.nodeSelector splits the nodes between two DaemonSets by node affinity, so it cannot be combined with affinity.nodeAffinity: say which nodes get the agent with nodeSelector instead" }}
{{- end }}
{{- if and .Values.dra.enabled (semverCompare "<1.34.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "dra.enabled needs Kubernetes 1.34 or later (resource.k8s.io/v1); this cluster is %s: set dra.enabled=false" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not (and .Values.metrics.enabled .Values.metrics.service.enabled)) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled and metrics.service.enabled: the ServiceMonitor scrapes through the Service" }}
{{- end }}
{{- end }}
