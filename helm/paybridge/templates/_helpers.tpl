{{/*
Names and labels, in the usual Helm shape.
*/}}
{{- define "paybridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "paybridge.fullname" -}}
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

{{- define "paybridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "paybridge.labels" -}}
helm.sh/chart: {{ include "paybridge.chart" . }}
{{ include "paybridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: paybridge
{{- end }}

{{/* What the Deployment, its Services, the PDB and the NetworkPolicy select. */}}
{{- define "paybridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paybridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The pods of the Deployment (the migration Job's pods are component "migrate"). */}}
{{- define "paybridge.podSelectorLabels" -}}
{{ include "paybridge.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "paybridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "paybridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: a digest pins it, else the tag (default: appVersion). */}}
{{- define "paybridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Database: "postgres" when the URL comes from a Secret or is a postgres URL, else "sqlite".
A URL kept in a Secret is taken to be PostgreSQL: SQLite needs no credentials.
*/}}
{{- define "paybridge.databaseBackend" -}}
{{- $url := .Values.database.url | default "" }}
{{- if .Values.database.existingSecret }}postgres
{{- else if or (hasPrefix "postgres://" $url) (hasPrefix "postgresql://" $url) }}postgres
{{- else }}sqlite
{{- end }}
{{- end }}

{{- define "paybridge.sqliteUrl" -}}
{{- .Values.database.url | default "sqlite:/data/paybridge.db" }}
{{- end }}

{{/* The chart-made Secret for a development database.url. */}}
{{- define "paybridge.databaseSecretName" -}}
{{- printf "%s-database" (include "paybridge.fullname" .) }}
{{- end }}

{{/* PAYBRIDGE_DATABASE_URL as an env entry, for the core and the migration Job. */}}
{{- define "paybridge.databaseUrlEnv" -}}
- name: PAYBRIDGE_DATABASE_URL
{{- if .Values.database.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
{{- else if eq (include "paybridge.databaseBackend" .) "postgres" }}
  valueFrom:
    secretKeyRef:
      name: {{ include "paybridge.databaseSecretName" . }}
      key: database-url
{{- else }}
  value: {{ include "paybridge.sqliteUrl" . | quote }}
{{- end }}
{{- end }}

{{- define "paybridge.stripeSecretName" -}}
{{- .Values.stripe.existingSecret | default (printf "%s-stripe" (include "paybridge.fullname" .)) }}
{{- end }}

{{- define "paybridge.tenantsSecretName" -}}
{{- .Values.tenants.existingSecret | default (printf "%s-tenants" (include "paybridge.fullname" .)) }}
{{- end }}

{{- define "paybridge.gatewaySecretName" -}}
{{- .Values.gateway.existingSecret | default (printf "%s-gateway" (include "paybridge.fullname" .)) }}
{{- end }}

{{/* The return URL handed to pages: core.returnUrl, else the first ingress host, else unset. */}}
{{- define "paybridge.returnUrl" -}}
{{- if .Values.core.returnUrl }}
{{- .Values.core.returnUrl }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- printf "https://%s/payment/return" (first .Values.ingress.hosts) }}
{{- end }}
{{- end }}

{{/* The gateway's public base for hosted payment page links: core.publicUrl, else the first
ingress host, else unset (the core then takes the origin of PAYBRIDGE_RETURN_URL). */}}
{{- define "paybridge.publicUrl" -}}
{{- if .Values.core.publicUrl }}
{{- .Values.core.publicUrl }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- printf "https://%s" (first .Values.ingress.hosts) }}
{{- end }}
{{- end }}

{{/* The preStop pause of both containers (no shell in the image: the kubelet sleeps). */}}
{{- define "paybridge.lifecycle" -}}
{{- if gt (int .Values.preStopSleepSeconds) 0 }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ int .Values.preStopSleepSeconds }}
{{- end }}
{{- end }}

{{/*
Combinations the schema cannot express. Each stops the install with one line that says what to
change.
*/}}
{{- define "paybridge.validate" -}}
{{- $backend := include "paybridge.databaseBackend" . }}
{{- $url := .Values.database.url | default "" }}
{{- if and $url (not .Values.database.existingSecret) (not (or (hasPrefix "sqlite:" $url) (hasPrefix "postgres://" $url) (hasPrefix "postgresql://" $url))) }}
{{- fail "database.url must start with sqlite:, postgres:// or postgresql:// (production: put the URL in a Secret and set database.existingSecret)" }}
{{- end }}
{{- if eq $backend "sqlite" }}
{{- if ne (int .Values.replicaCount) 1 }}
{{- fail (printf "SQLite supports exactly one replica, but replicaCount is %d: use PostgreSQL (database.existingSecret) to run several replicas" (int .Values.replicaCount)) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "SQLite supports exactly one replica, so autoscaling.enabled must be false: use PostgreSQL (database.existingSecret) to autoscale" }}
{{- end }}
{{- if not .Values.persistence.enabled }}
{{- fail "SQLite needs a PersistentVolumeClaim (persistence.enabled=true), or every payment is lost with the pod: enable persistence or use PostgreSQL (database.existingSecret)" }}
{{- end }}
{{- if not (hasPrefix "sqlite:/data/" (include "paybridge.sqliteUrl" .)) }}
{{- fail "a SQLite database.url must point into the volume: sqlite:/data/NAME.db" }}
{{- end }}
{{- end }}
{{- $grace := add (int .Values.preStopSleepSeconds) (int .Values.core.shutdownGraceSeconds) }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $grace) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than preStopSleepSeconds + core.shutdownGraceSeconds (%d), or Kubernetes kills pods before they drain" (int .Values.terminationGracePeriodSeconds) (int $grace)) }}
{{- end }}
{{- $maxUnavailable := toString (.Values.podDisruptionBudget.maxUnavailable | default "") }}
{{- $minAvailable := toString (.Values.podDisruptionBudget.minAvailable | default "") }}
{{- if and .Values.podDisruptionBudget.enabled $maxUnavailable $minAvailable }}
{{- fail "podDisruptionBudget: set either maxUnavailable or minAvailable, not both (\"\" unsets one)" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not $maxUnavailable) (not $minAvailable) }}
{{- fail "podDisruptionBudget: set maxUnavailable or minAvailable" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not be larger than autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
