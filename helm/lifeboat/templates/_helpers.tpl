{{/* The chart's name, or nameOverride. */}}
{{- define "lifeboat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object's name: fullnameOverride, else the release name
when it already contains the chart name ("lifeboat" gives lifeboat-operator),
else <release>-<chart>. Trimmed so "<fullname>-operator" fits in 63.
*/}}
{{- define "lifeboat.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lifeboat.operatorName" -}}
{{- printf "%s-operator" (include "lifeboat.fullname" .) -}}
{{- end -}}

{{/* The ClusterRole a namespace binds to let the operator read its credentials. */}}
{{- define "lifeboat.credentialsReaderName" -}}
{{- printf "%s-credentials-reader" (include "lifeboat.fullname" .) -}}
{{- end -}}

{{- define "lifeboat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lifeboat.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "lifeboat.baseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "lifeboat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels on the operator's objects (Deployment, pods, Service, ...). */}}
{{- define "lifeboat.labels" -}}
{{ include "lifeboat.baseLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/*
What the Deployment, the Service and the PodDisruptionBudget select on. No
instance label: one Lifeboat per namespace (the leader Lease has a fixed
name), and the selector (immutable) stays the one of config/operator, so
either install can replace the other.
*/}}
{{- define "lifeboat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lifeboat.name" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* registry/repository:tag or registry/repository@digest. */}}
{{- define "lifeboat.imageRef" -}}
{{- $registry := .image.registry -}}
{{- $repository := .image.repository -}}
{{- $path := ternary $repository (printf "%s/%s" $registry $repository) (empty $registry) -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $path .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $path (default .appVersion .image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "lifeboat.operatorImage" -}}
{{- include "lifeboat.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{- define "lifeboat.nodeExporterImage" -}}
{{- include "lifeboat.imageRef" (dict "image" .Values.nodeExporter.image "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{/* imagePullSecrets as a comma-separated list of names. */}}
{{- define "lifeboat.pullSecretNames" -}}
{{- $names := list -}}
{{- range .Values.imagePullSecrets -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{/* operator.trustedTokenRealms as LIFEBOAT_TRUSTED_TOKEN_REALMS: registry=realm, comma-separated, sorted by registry. */}}
{{- define "lifeboat.trustedTokenRealms" -}}
{{- $items := list -}}
{{- range $registry := keys .Values.operator.trustedTokenRealms | sortAlpha -}}
{{- range $realm := index $.Values.operator.trustedTokenRealms $registry -}}
{{- $items = append $items (printf "%s=%s" $registry $realm) -}}
{{- end -}}
{{- end -}}
{{- join "," $items -}}
{{- end -}}

{{/* The admission webhook's Service, configuration and Secret share one name. */}}
{{- define "lifeboat.admissionName" -}}
{{- printf "%s-admission" (include "lifeboat.operatorName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
