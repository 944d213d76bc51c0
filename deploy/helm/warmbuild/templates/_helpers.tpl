{{/* Names ------------------------------------------------------------------------------------ */}}

{{- define "warmbuild.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "warmbuild.fullname" -}}
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

{{/* The StatefulSet, its headless Service and the prefix of every builder pod name. Pod names
     (<builder>-<ordinal>) are also Lease name prefixes (<pod>-slot-<i>), so keep it short. */}}
{{- define "warmbuild.builderName" -}}
{{- printf "%s-builder" (include "warmbuild.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "warmbuild.schedulerName" -}}
{{- printf "%s-scheduler" (include "warmbuild.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "warmbuild.builderServiceAccountName" -}}
{{- if .Values.builder.serviceAccount.create }}
{{- default (include "warmbuild.builderName" .) .Values.builder.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.builder.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "warmbuild.ciServiceAccountName" -}}
{{- default (printf "%s-ci" (include "warmbuild.fullname" .)) .Values.rbac.ci.serviceAccount.name }}
{{- end }}

{{- define "warmbuild.schedulerServiceAccountName" -}}
{{- if .Values.scheduler.serviceAccount.create }}
{{- default (include "warmbuild.schedulerName" .) .Values.scheduler.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.scheduler.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------------- */}}

{{- define "warmbuild.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "warmbuild.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: warmbuild
{{- end }}

{{/* Builder pods: what the StatefulSet, Service, PDB and NetworkPolicy select. The pool label is
     what `warmbuild build --pool` discovers builders by. */}}
{{- define "warmbuild.builderSelectorLabels" -}}
app.kubernetes.io/name: {{ include "warmbuild.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: builder
warmbuild.dev/pool: {{ .Values.pool | quote }}
{{- end }}

{{- define "warmbuild.schedulerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "warmbuild.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: scheduler
{{- end }}

{{/* Builder image and mode ------------------------------------------------------------------- */}}

{{- define "warmbuild.rootless" -}}
{{- if eq .Values.builder.mode "rootless" }}true{{ end }}
{{- end }}

{{- define "warmbuild.builderImage" -}}
{{- $tag := .Values.builder.image.tag }}
{{- if not $tag }}
{{- $tag = printf "v0.34.2-warmbuild%s%s" .Chart.AppVersion (ternary "-rootless" "" (eq .Values.builder.mode "rootless")) }}
{{- end }}
{{- printf "%s:%s" .Values.builder.image.repository $tag }}
{{- end }}

{{- define "warmbuild.schedulerImage" -}}
{{- printf "%s:%s" .Values.scheduler.image.repository (default .Chart.AppVersion .Values.scheduler.image.tag) }}
{{- end }}

{{/* buildkitd's state directory and unix socket, per mode (as in the moby/buildkit images). */}}
{{- define "warmbuild.stateDir" -}}
{{- if include "warmbuild.rootless" . }}/home/user/.local/share/buildkit{{ else }}/var/lib/buildkit{{ end }}
{{- end }}

{{- define "warmbuild.socket" -}}
{{- if include "warmbuild.rootless" . }}unix:///run/user/1000/buildkit/buildkitd.sock{{ else }}unix:///run/buildkit/buildkitd.sock{{ end }}
{{- end }}

{{/* Volume size in MiB, from persistence.size (the schema allows Mi, Gi and Ti only). */}}
{{- define "warmbuild.volumeMiB" -}}
{{- $size := .Values.persistence.size | toString }}
{{- $number := regexFind "^[0-9]+" $size | int64 }}
{{- $unit := trimPrefix (regexFind "^[0-9]+" $size) $size }}
{{- if eq $unit "Ti" }}{{ mul $number 1048576 }}
{{- else if eq $unit "Gi" }}{{ mul $number 1024 }}
{{- else if eq $unit "Mi" }}{{ $number }}
{{- else }}{{ fail (printf "persistence.size %q: use Mi, Gi or Ti" $size) }}
{{- end }}
{{- end }}

{{/* percent of the volume as a buildkitd disk size: "<n>MB" (buildkitd reads MB as MiB). */}}
{{- define "warmbuild.volumeShare" -}}
{{- $mib := include "warmbuild.volumeMiB" .root | int64 }}
{{- printf "%dMB" (div (mul $mib (int64 .percent)) 100) }}
{{- end }}

{{/* Drain ------------------------------------------------------------------------------------ */}}

{{- define "warmbuild.drainTimeout" -}}
{{- $grace := int .Values.builder.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" .Values.drain.timeoutSeconds }}
{{- max 0 (sub $grace 30) }}
{{- else }}
{{- $timeout := int .Values.drain.timeoutSeconds }}
{{- if ge $timeout $grace }}
{{- fail (printf "drain.timeoutSeconds (%d) must be below builder.terminationGracePeriodSeconds (%d): buildkitd needs time to stop after the drain" $timeout $grace) }}
{{- end }}
{{- $timeout }}
{{- end }}
{{- end }}

{{/* Pod names the builder's Role may patch (its own pod): one per ordinal the pool can reach. */}}
{{- define "warmbuild.builderOrdinals" -}}
{{- $count := int .Values.builder.replicas }}
{{- if .Values.autoscaling.enabled }}{{ $count = max $count (int .Values.autoscaling.maxReplicas) }}{{ end }}
{{- $count }}
{{- end }}

{{/* TLS -------------------------------------------------------------------------------------- */}}

{{/* The builders' Secret: ca.crt (verifies CI steps' client certificates) and <pod>.crt/<pod>.key
     per ordinal. Generated by the chart unless tls.existingSecret names one of that layout. */}}
{{- define "warmbuild.tlsServerSecret" -}}
{{- default (printf "%s-tls" (include "warmbuild.builderName" .)) .Values.tls.existingSecret }}
{{- end }}

{{- define "warmbuild.tlsClientSecret" -}}
{{- printf "%s-client-tls" (include "warmbuild.fullname" .) }}
{{- end }}

{{/* The DNS names of one builder (dict "root" $ "pod" NAME): its stable name under the headless
     Service, which is what the CI step verifies (<pod>.<service>.<namespace>.svc). */}}
{{- define "warmbuild.builderDnsNames" -}}
{{- $service := include "warmbuild.builderName" .root }}
{{- $name := printf "%s.%s.%s.svc" .pod $service .root.Release.Namespace }}
- {{ $name | quote }}
- {{ printf "%s.%s" $name .root.Values.tls.clusterDomain | quote }}
{{- end }}

{{/* RBAC --------------------------------------------------------------------------------------- */}}

{{/* The pool's build history ConfigMap (pool/history.py: names.history_configmap_name). The chart
     creates it, so neither CI steps nor the scheduler need `configmaps create`. */}}
{{- define "warmbuild.historyConfigMap" -}}
{{- printf "warmbuild-history-%s" .Values.pool }}
{{- end }}

{{/* What CI steps and the scheduler both do: read the pool (its pods, and the StatefulSets that
     vouch for them), take/renew/release slot Leases, append the pool's history. No delete: a Lease
     left by an earlier pod of the same name is taken over by compare-and-swap (pool/leases.py). */}}
{{- define "warmbuild.poolRules" -}}
# Pool discovery: builder pods, their readiness and slots.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Pool membership: a pod counts only if its controller is one of the pool's StatefulSets.
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch]
# Slot Leases: compare-and-swap acquire, renew, release; a stale Lease is taken over, never deleted.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, create, update, patch]
{{- if .Values.rbac.ci.history }}
# Build history that placement learns from: the pool's one ConfigMap, created by the chart.
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [{{ include "warmbuild.historyConfigMap" . }}]
  verbs: [get, update, patch]
{{- end }}
{{- end }}

{{/* Rules of a CI step: the pool's, plus ephemeral builders. Pod create/delete is only ever
     granted together with the ValidatingAdmissionPolicy (admission-policy.yaml) that admits
     ephemeral builder pods in warmbuild's shape only. */}}
{{- define "warmbuild.ciRules" -}}
{{ include "warmbuild.poolRules" . }}
{{- if .Values.rbac.ci.ephemeralBuilders }}
{{ include "warmbuild.ephemeralRules" . }}
{{- end }}
{{- end }}

{{/* Admission of CI-created pods ---------------------------------------------------------------- */}}

{{/* Who the admission policy checks: every subject of the CI Role's binding, as the API server
     names it in request.userInfo (ServiceAccounts and Users by username, Groups by group). */}}
{{- define "warmbuild.ciUsernames" -}}
{{- $names := list }}
{{- if .Values.rbac.ci.serviceAccount.create }}
{{- $names = append $names (printf "system:serviceaccount:%s:%s" .Release.Namespace (include "warmbuild.ciServiceAccountName" .)) }}
{{- end }}
{{- range .Values.rbac.ci.extraSubjects }}
{{- if eq .kind "ServiceAccount" }}
{{- $names = append $names (printf "system:serviceaccount:%s:%s" (default $.Release.Namespace .namespace) .name) }}
{{- else if eq .kind "User" }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- $names | toJson }}
{{- end }}

{{- define "warmbuild.ciGroups" -}}
{{- $groups := list }}
{{- range .Values.rbac.ci.extraSubjects }}
{{- if eq .kind "Group" }}{{ $groups = append $groups .name }}{{ end }}
{{- end }}
{{- $groups | toJson }}
{{- end }}

{{/* privileged or rootless: the pool's ephemeral builder mode (default: builder.mode). */}}
{{- define "warmbuild.ephemeralMode" -}}
{{- default .Values.builder.mode .Values.ephemeral.mode }}
{{- end }}

{{- define "warmbuild.admissionPolicyName" -}}
{{- printf "%s-%s-ephemeral-builders" .Release.Namespace (include "warmbuild.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Gateway ---------------------------------------------------------------------------------- */}}

{{- define "warmbuild.gatewayName" -}}
{{- printf "%s-gateway" (include "warmbuild.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "warmbuild.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "warmbuild.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* The grant CA's Secret: its key signs runners' grant certificates; only the scheduler mounts it. */}}
{{- define "warmbuild.grantCaSecret" -}}
{{- printf "%s-grant-ca" (include "warmbuild.schedulerName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "warmbuild.gatewayTlsSecret" -}}
{{- printf "%s-tls" (include "warmbuild.gatewayName" .) }}
{{- end }}

{{/* HOST:PORT runners connect to: gateway.address, else the first of gateway.hosts on the gateway's port. */}}
{{- define "warmbuild.gatewayAddress" -}}
{{- if .Values.gateway.address }}{{ .Values.gateway.address }}
{{- else if .Values.gateway.hosts }}{{ printf "%s:%d" (first .Values.gateway.hosts) (int .Values.gateway.port) }}
{{- else }}{{ printf "%s.%s.svc:%d" (include "warmbuild.gatewayName" .) .Release.Namespace (int .Values.gateway.port) }}
{{- end }}
{{- end }}

{{/* Where the gateway passes scheduler connections through (TLS untouched): the scheduler's Service. */}}
{{- define "warmbuild.gatewaySchedulerAddress" -}}
{{- default (printf "%s.%s.svc:%d" (include "warmbuild.schedulerName" .) .Release.Namespace (int .Values.scheduler.port)) .Values.gateway.schedulerAddress }}
{{- end }}

{{/* pods create/delete, secrets create, events get/list: what starting ephemeral builders takes
(the CI Role's, and the scheduler's when it starts them for untrusted callers). */}}
{{- define "warmbuild.ephemeralRules" -}}
# Ephemeral fallback builders, admitted only in warmbuild's shape (ValidatingAdmissionPolicy).
- apiGroups: [""]
  resources: [pods]
  verbs: [create, delete]
# Ephemeral builders' run certificates (admitted only as <pod>-tls, type kubernetes.io/tls, owned by
# the pod: ValidatingAdmissionPolicy). Create only: CI steps never read a Secret.
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
# Ephemeral builders: the pod's events when it fails to start.
- apiGroups: [""]
  resources: [events]
  verbs: [get, list]
{{- end }}

{{/* Who the ephemeral builders' admission policies check: the CI Role's subjects, and the
scheduler's ServiceAccount when it starts ephemeral builders (scheduler.ephemeralBuilders). */}}
{{- define "warmbuild.ephemeralCreators" -}}
{{- $names := include "warmbuild.ciUsernames" . | fromJsonArray }}
{{- if .Values.scheduler.ephemeralBuilders }}
{{- $names = append $names (printf "system:serviceaccount:%s:%s" .Release.Namespace (include "warmbuild.schedulerServiceAccountName" .)) }}
{{- end }}
{{- $names | toJson }}
{{- end }}
