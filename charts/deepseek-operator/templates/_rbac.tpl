{{/*
The operator's permissions, one list for both modes: a ClusterRole (cluster-wide) or a Role in each watched
namespace. Least privilege: only what the controllers do (docs/operator.md lists why each rule exists). No
"update": kopf and the controllers write with PATCH (server-side apply, merge patches, status patches) only.
Never Secrets: workers get credentials through env/envFrom references, which the operator copies without
reading them.
*/}}
{{- define "deepseek-operator.namespacedRules" -}}
# The two custom resources: watch, add/remove the finalizer (patch), write status; delete a finished training
# whose runPolicy.ttlSecondsAfterFinished has passed (inferences are never deleted by the operator).
- apiGroups: ["deepseek.ai"]
  resources: ["deepseektrainings"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["deepseek.ai"]
  resources: ["deepseekinferences"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["deepseek.ai"]
  resources: ["deepseektrainings/status", "deepseekinferences/status"]
  verbs: ["get", "patch"]
# Children carry owner references with blockOwnerDeletion (needed where OwnerReferencesPermissionEnforcement is on).
- apiGroups: ["deepseek.ai"]
  resources: ["deepseektrainings/finalizers", "deepseekinferences/finalizers"]
  verbs: ["update"]
# Children, applied with server-side apply and deleted when no longer wanted: run configs and progress
# ConfigMaps, worker ServiceAccounts, Services, Jobs, Deployments, HPAs, PDBs, ServiceMonitors.
- apiGroups: [""]
  resources: ["configmaps", "serviceaccounts", "services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The worker's least-privilege Role (get/patch of its own progress ConfigMap) and its binding. Creating
# them needs no escalate/bind verbs: the operator itself holds every permission the Role grants.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Worker pods are observed, never created directly (Jobs and Deployments do that).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Events on the custom resources (kopf and the controllers post core/v1 Events; never updated).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* Cluster-scoped reads kopf needs in either mode: it discovers the watched resources through their CRDs (and
the inference controller notices the ServiceMonitor CRD appearing). */}}
{{- define "deepseek-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* Namespaced mode only: kopf checks which of the watched namespaces exist by listing namespaces (names
only); without it, it retries, logs errors and falls back to assuming they exist. */}}
{{- define "deepseek-operator.namespaceRules" -}}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}
