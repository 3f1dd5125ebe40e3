{{/*
Helpers of the mlflow-stack chart. Names, labels, images, the secret list,
the environment every MLflow container gets, security contexts, hooks.
*/}}

{{- define "mlflow-stack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlflow-stack.fullname" -}}
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

{{/* Name of one component's objects: <fullname>-<component>. */}}
{{- define "mlflow-stack.componentName" -}}
{{- printf "%s-%s" (include "mlflow-stack.fullname" .root | trunc 50 | trimSuffix "-") .component -}}
{{- end -}}

{{/* Labels of every object; `component` names the part of the stack. */}}
{{- define "mlflow-stack.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "mlflow-stack.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: mlflow-stack
{{- end -}}

{{- define "mlflow-stack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlflow-stack.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference from {repository, tag, digest}: pinned, never `latest`. */}}
{{- define "mlflow-stack.image" -}}
{{- $tag := toString (.tag | default "") -}}
{{- if or (eq $tag "") (eq $tag "latest") -}}
{{- fail (printf "image %s: set an exact tag (empty and `latest` are refused)" .repository) -}}
{{- end -}}
{{- if .digest -}}
{{- printf "%s:%s@%s" .repository $tag .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "mlflow-stack.mlflowImage" -}}
{{- include "mlflow-stack.image" (dict "repository" .Values.image.repository "tag" (.Values.image.tag | default .Chart.AppVersion) "digest" .Values.image.digest) -}}
{{- end -}}

{{/* In-cluster DNS names, fully qualified (nginx's resolver has no search path). */}}
{{- define "mlflow-stack.serviceHost" -}}
{{- printf "%s.%s.svc.%s" (include "mlflow-stack.componentName" .) .root.Release.Namespace .root.Values.clusterDomain -}}
{{- end -}}

{{- define "mlflow-stack.postgresqlHost" -}}
{{- if .Values.postgresql.bundled.enabled -}}
{{- include "mlflow-stack.serviceHost" (dict "root" . "component" "postgresql") -}}
{{- else -}}
{{- required "postgresql.host is required (or postgresql.bundled.enabled=true)" .Values.postgresql.host -}}
{{- end -}}
{{- end -}}

{{- define "mlflow-stack.postgresqlPort" -}}
{{- if .Values.postgresql.bundled.enabled -}}5432{{- else -}}{{ .Values.postgresql.port }}{{- end -}}
{{- end -}}

{{- define "mlflow-stack.s3Endpoint" -}}
{{- if .Values.s3.bundled.enabled -}}
{{- printf "http://%s:9000" (include "mlflow-stack.serviceHost" (dict "root" . "component" "s3")) -}}
{{- else -}}
{{- .Values.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{/* The port egress to the external S3 endpoint needs: explicit, or the scheme's. */}}
{{- define "mlflow-stack.s3Port" -}}
{{- $endpoint := .Values.s3.endpoint | default "https://s3.amazonaws.com" -}}
{{- $url := urlParse $endpoint -}}
{{- $hostport := splitList ":" $url.host -}}
{{- if gt (len $hostport) 1 -}}{{ last $hostport }}{{- else if eq $url.scheme "http" -}}80{{- else -}}443{{- end -}}
{{- end -}}

{{/*
The stack's secrets: one line each. The key is the file name in /run/secrets
(stack_ops/common.py reads it there); `length` is what a generated value gets;
`upper` generates capitals and digits only; `for` names the components that
mount it. Adding a secret is adding a line here.
*/}}
{{- define "mlflow-stack.secretSpecs" -}}
mlflow_db_password:    {length: 32, for: [server, migrate, gc, postgresql]}
auth_db_password:      {length: 32, for: [server, migrate, accounts, postgresql]}
mlflow_admin_password: {length: 24, for: [server, gc, accounts]}
flask_secret_key:      {length: 48, for: [server]}
metrics_scrape_token:  {length: 48, for: [server]}
kek_passphrase:        {length: 48, for: [server, migrate]}
webhook_encryption_key: {fernet: true, for: [server]}
{{- if .Values.postgresql.bundled.enabled }}
postgres_password:     {length: 32, for: [postgresql]}
{{- end }}
{{- if .Values.s3.staticCredentials }}
s3_access_key:         {length: 20, upper: true, for: [server, bucket, s3]}
s3_secret_key:         {length: 40, for: [server, bucket, s3]}
{{- end }}
{{- if .Values.accounts.enabled }}
trainer_password:      {length: 24, for: [accounts]}
{{- end }}
{{- end -}}

{{- define "mlflow-stack.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "mlflow-stack.componentName" (dict "root" . "component" "secrets")) -}}
{{- end -}}

{{/*
The secrets volume of a pod: only the files its components read, at
/run/secrets, readable by the pod's group. `components` is a list.
*/}}
{{- define "mlflow-stack.secretsVolume" -}}
{{- $specs := include "mlflow-stack.secretSpecs" .root | fromYaml -}}
{{- $keys := list -}}
{{- range $name, $spec := $specs -}}
{{- range $.components -}}
{{- if has . $spec.for -}}{{- $keys = append $keys $name -}}{{- end -}}
{{- end -}}
{{- end -}}
- name: secrets
{{- if $keys }}
  secret:
    secretName: {{ include "mlflow-stack.secretName" .root }}
    defaultMode: 0440
    items:
      {{- range $keys | uniq | sortAlpha }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- else }}
  # Nothing to read (an empty secret volume would mount every key).
  emptyDir:
    sizeLimit: 1Mi
{{- end }}
{{- end -}}

{{/* Hostnames MLflow accepts in `Host`: the public ones plus the Services'. */}}
{{- define "mlflow-stack.publicHostnames" -}}
{{- $names := concat .Values.mlflow.publicHostnames .Values.httpRoute.hostnames -}}
{{- range .Values.ingress.hosts -}}{{- $names = append $names . -}}{{- end -}}
{{- range list "nginx" "server" -}}
{{- $svc := include "mlflow-stack.componentName" (dict "root" $ "component" .) -}}
{{- $names = concat $names (list $svc (printf "%s.%s" $svc $.Release.Namespace) (printf "%s.%s.svc" $svc $.Release.Namespace) (include "mlflow-stack.serviceHost" (dict "root" $ "component" .))) -}}
{{- end -}}
{{- $names | uniq | join "," -}}
{{- end -}}

{{/*
Where each provisioning task runs. With a bundled store the store only exists
once the release does, so a pre-install hook could not reach it: the server
pod (a single replica) runs the task as an init container instead.
*/}}
{{- define "mlflow-stack.migrateInPod" -}}
{{- if .Values.postgresql.bundled.enabled -}}true{{- end -}}
{{- end -}}

{{- define "mlflow-stack.bucketInPod" -}}
{{- if and .Values.s3.createBucket .Values.s3.bundled.enabled -}}true{{- end -}}
{{- end -}}

{{/*
The environment of every container of the MLflow image (server, jobs, gc):
settings only, never a secret (those are files in /run/secrets).
*/}}
{{- define "mlflow-stack.env" -}}
- name: POSTGRES_HOST
  value: {{ include "mlflow-stack.postgresqlHost" . | quote }}
- name: POSTGRES_PORT
  value: {{ include "mlflow-stack.postgresqlPort" . | quote }}
- name: MLFLOW_DB_NAME
  value: {{ .Values.postgresql.database | quote }}
- name: MLFLOW_DB_USER
  value: {{ .Values.postgresql.user | quote }}
- name: MLFLOW_AUTH_DB_NAME
  value: {{ .Values.postgresql.authDatabase | quote }}
- name: MLFLOW_AUTH_DB_USER
  value: {{ .Values.postgresql.authUser | quote }}
{{- if and (not .Values.postgresql.bundled.enabled) .Values.postgresql.sslMode }}
- name: POSTGRES_SSLMODE
  value: {{ .Values.postgresql.sslMode | quote }}
{{- end }}
{{- if include "mlflow-stack.postgresqlCA" . }}
- name: POSTGRES_SSLROOTCERT
  value: {{ printf "/etc/stack/postgresql-ca/%s" .Values.postgresql.caCert.key | quote }}
{{- end }}
- name: S3_ENDPOINT_URL
  value: {{ include "mlflow-stack.s3Endpoint" . | quote }}
- name: S3_BUCKET
  value: {{ .Values.s3.bucket | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
- name: MLFLOW_SERVER_URL
  value: {{ printf "http://%s:5000" (include "mlflow-stack.serviceHost" (dict "root" . "component" "server")) | quote }}
- name: MLFLOW_PUBLIC_HOSTNAMES
  value: {{ include "mlflow-stack.publicHostnames" . | quote }}
- name: MLFLOW_ADMIN_USERNAME
  value: {{ .Values.mlflow.adminUsername | quote }}
- name: MLFLOW_DEFAULT_PERMISSION
  value: {{ .Values.mlflow.defaultPermission | quote }}
- name: MLFLOW_AUTH_CACHE_TTL_SECONDS
  value: {{ .Values.mlflow.authCacheTtlSeconds | quote }}
- name: MLFLOW_DISABLE_TELEMETRY
  value: {{ (not .Values.mlflow.telemetry) | toString | quote }}
- name: MLFLOW_AUTH_MAX_FAILURES
  value: {{ .Values.mlflow.authMaxFailures | quote }}
- name: MLFLOW_AUTH_LOCKOUT_SECONDS
  value: {{ .Values.mlflow.authLockoutSeconds | quote }}
- name: ARTIFACT_DIRECT_TRANSFERS
  value: {{ .Values.mlflow.artifactDirectTransfers | quote }}
- name: ARTIFACT_DIRECT_MAX_UPLOAD_BYTES
  value: {{ .Values.mlflow.artifactDirectMaxUploadBytes | int64 | quote }}
- name: MLFLOW_SQLALCHEMYSTORE_POOL_SIZE
  value: {{ .Values.mlflow.sqlalchemyPoolSize | quote }}
- name: MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW
  value: {{ .Values.mlflow.sqlalchemyMaxOverflow | quote }}
- name: MLFLOW_GC_RETENTION
  value: {{ .Values.gc.retention | quote }}
- name: MLFLOW_TRAINER_USERNAME
  value: {{ .Values.accounts.trainerUsername | quote }}
{{- end -}}

{{/* The CA of the external PostgreSQL, if one is given: "configMap" or "secret". */}}
{{- define "mlflow-stack.postgresqlCA" -}}
{{- if not .Values.postgresql.bundled.enabled -}}
{{- if .Values.postgresql.caCert.configMap -}}configMap{{- else if .Values.postgresql.caCert.secret -}}secret{{- end -}}
{{- end -}}
{{- end -}}

{{/* Volumes every MLflow-image pod has: secrets, /tmp, and the PostgreSQL CA. */}}
{{- define "mlflow-stack.mlflowVolumes" -}}
{{ include "mlflow-stack.secretsVolume" (dict "root" .root "components" .components) }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmpSize | default "1Gi" }}
{{- $ca := include "mlflow-stack.postgresqlCA" .root }}
{{- if eq $ca "configMap" }}
- name: postgresql-ca
  configMap:
    name: {{ .root.Values.postgresql.caCert.configMap }}
    items:
      - key: {{ .root.Values.postgresql.caCert.key }}
        path: {{ .root.Values.postgresql.caCert.key }}
{{- else if eq $ca "secret" }}
- name: postgresql-ca
  secret:
    secretName: {{ .root.Values.postgresql.caCert.secret }}
    items:
      - key: {{ .root.Values.postgresql.caCert.key }}
        path: {{ .root.Values.postgresql.caCert.key }}
{{- end }}
{{- end -}}

{{- define "mlflow-stack.mlflowVolumeMounts" -}}
- name: secrets
  mountPath: /run/secrets
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if include "mlflow-stack.postgresqlCA" . }}
- name: postgresql-ca
  mountPath: /etc/stack/postgresql-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod Security Standard "restricted", pod level; the argument is the uid. */}}
{{- define "mlflow-stack.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod Security Standard "restricted", container level; the argument is the uid. */}}
{{- define "mlflow-stack.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The MLflow image's uid/gid (mlflow-server/Dockerfile). */}}
{{- define "mlflow-stack.mlflowUid" -}}10001{{- end -}}

{{/* Scheduling and pull secrets every pod shares. */}}
{{- define "mlflow-stack.podCommon" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "mlflow-stack.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "mlflow-stack.fullname" .) -}}
{{- end -}}

{{- define "mlflow-stack.hookServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- include "mlflow-stack.componentName" (dict "root" . "component" "hooks") -}}
{{- else -}}
{{- include "mlflow-stack.serviceAccountName" . -}}
{{- end -}}
{{- end -}}

{{/*
A pre-install/pre-upgrade hook: objects the hook Jobs need (weight -10) exist
before them; the Jobs (weight 0 and up) run before the release's pods change.
*/}}
{{- define "mlflow-stack.hookAnnotations" -}}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: {{ .deletePolicy | default "before-hook-creation" }}
{{- end -}}

{{/* A one-shot job of the stack's entrypoint as a container (hook Job or init container). */}}
{{- define "mlflow-stack.taskContainer" -}}
- name: {{ .task }}
  image: {{ include "mlflow-stack.mlflowImage" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  args: [{{ .task | quote }}]
  env:
    {{- include "mlflow-stack.env" .root | nindent 4 }}
  resources:
    {{- toYaml .root.Values.jobs.resources | nindent 4 }}
  securityContext:
    {{- include "mlflow-stack.containerSecurityContext" (include "mlflow-stack.mlflowUid" .root) | nindent 4 }}
  volumeMounts:
    {{- include "mlflow-stack.mlflowVolumeMounts" .root | nindent 4 }}
{{- end -}}

{{/* Settings that can never work together fail the render with a reason. */}}
{{- define "mlflow-stack.validate" -}}
{{- if and .Values.s3.bundled.enabled (not .Values.s3.staticCredentials) -}}
{{- fail "s3.bundled.enabled needs s3.staticCredentials=true: the bundled SeaweedFS uses the generated key pair" -}}
{{- end -}}
{{- if and .Values.s3.staticCredentials (not .Values.s3.bundled.enabled) (not .Values.secrets.existingSecret) -}}
{{- fail "s3.staticCredentials with an external S3 store needs secrets.existingSecret holding its s3_access_key and s3_secret_key (a generated key pair means nothing to your store)" -}}
{{- end -}}
{{- if and (or .Values.postgresql.bundled.enabled .Values.server.jobExecution) (or (gt (int .Values.server.replicas) 1) .Values.server.autoscaling.enabled) -}}
{{- fail "server.replicas must be 1 and server.autoscaling.enabled false with postgresql.bundled.enabled (the pod migrates the schema itself) or server.jobExecution (MLflow's periodic jobs must run once)" -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.ingress.hosts) -}}
{{- fail "ingress.enabled needs ingress.hosts" -}}
{{- end -}}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) -}}
{{- fail "httpRoute.enabled needs httpRoute.parentRefs (the Gateway to attach to)" -}}
{{- end -}}
{{- if and .Values.postgresql.caCert.configMap .Values.postgresql.caCert.secret -}}
{{- fail "postgresql.caCert: set configMap or secret, not both" -}}
{{- end -}}
{{- end -}}

{{/*
A one-shot job of the stack as a pre-install/pre-upgrade hook Job: it runs
before the release's Deployments change. Deleted when it succeeded; a failed
one stays for `kubectl logs` until the next attempt.
*/}}
{{- define "mlflow-stack.hookJob" -}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "mlflow-stack.componentName" (dict "root" .root "component" .task) }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "mlflow-stack.labels" (dict "root" .root "component" .task) | nindent 4 }}
  annotations:
    {{- include "mlflow-stack.hookAnnotations" (dict "weight" .weight "deletePolicy" "before-hook-creation,hook-succeeded") | nindent 4 }}
spec:
  backoffLimit: {{ .root.Values.jobs.backoffLimit }}
  activeDeadlineSeconds: {{ .root.Values.jobs.activeDeadlineSeconds }}
  template:
    metadata:
      labels:
        {{- include "mlflow-stack.labels" (dict "root" .root "component" .task) | nindent 8 }}
    spec:
      {{- include "mlflow-stack.podCommon" .root | nindent 6 }}
      serviceAccountName: {{ include "mlflow-stack.hookServiceAccountName" .root }}
      restartPolicy: Never
      securityContext:
        {{- include "mlflow-stack.podSecurityContext" (include "mlflow-stack.mlflowUid" .root) | nindent 8 }}
      containers:
        {{- include "mlflow-stack.taskContainer" . | nindent 8 }}
      volumes:
        {{- include "mlflow-stack.mlflowVolumes" (dict "root" .root "components" (list .task)) | nindent 8 }}
{{- end -}}

{{/* NetworkPolicy pieces: a peer that is one component's pods. */}}
{{- define "mlflow-stack.peer" -}}
- podSelector:
    matchLabels:
      {{- include "mlflow-stack.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* Egress rules to DNS, PostgreSQL and S3 (bundled pods or external peers). */}}
{{- define "mlflow-stack.egressDNS" -}}
- ports:
    - { port: 53, protocol: UDP }
    - { port: 53, protocol: TCP }
{{- end -}}

{{- define "mlflow-stack.egressPostgreSQL" -}}
{{- if .Values.postgresql.bundled.enabled -}}
- to:
    {{- include "mlflow-stack.peer" (dict "root" . "component" "postgresql") | nindent 4 }}
  ports:
    - { port: 5432, protocol: TCP }
{{- else -}}
- to:
    {{- toYaml .Values.networkPolicy.postgresqlTo | nindent 4 }}
  ports:
    - { port: {{ .Values.postgresql.port }}, protocol: TCP }
{{- end }}
{{- end -}}

{{- define "mlflow-stack.egressS3" -}}
{{- if .Values.s3.bundled.enabled -}}
- to:
    {{- include "mlflow-stack.peer" (dict "root" . "component" "s3") | nindent 4 }}
  ports:
    - { port: 9000, protocol: TCP }
{{- else -}}
- to:
    {{- toYaml .Values.networkPolicy.s3To | nindent 4 }}
  ports:
    - { port: {{ include "mlflow-stack.s3Port" . }}, protocol: TCP }
{{- end }}
{{- end -}}

{{/* The pods of the MLflow image's one-shot and periodic jobs. */}}
{{- define "mlflow-stack.jobComponents" -}}
[migrate, bucket, accounts, gc]
{{- end -}}
