#!/usr/bin/env bash
# The Helm chart (helm/lifeboat) on the real cluster: helm lint, the values
# schema rejecting bad values, the plain manifests in config/ being the chart
# rendered, every rendered object accepted by the API server (server-side dry
# run, strict field validation), the operator's pod meeting the "restricted"
# Pod Security level, the least-privilege RBAC, and a real install with the
# local values: two replicas Ready, exactly one leader (the Lease), failover
# when the leader goes, an upgrade, and an uninstall that leaves nothing behind
# but the CRDs.
#
# The install lives in a namespace of its own (lifeboat-helm-e2e) beside the
# development operator in lifeboat-system, on another port; it creates no
# policies, so the two operators never compete for work.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns="lifeboat-helm-e2e"
restricted_ns="lifeboat-helm-psa-$RANDOM"
release="lifeboat-e2e"
operator="$release-operator"
# Both replicas use the host network (local values); the development
# operator in lifeboat-system already holds 18080 on one node.
port=18081
chart="$REPO_ROOT/helm/lifeboat"
local_values="$REPO_ROOT/hack/values-local.yaml"
work="$(mktemp -d)"
echo "helm chart e2e (namespace $ns)"

"$REPO_ROOT/hack/build-helm.sh"
helm() { "$LIFEBOAT_BIN_CACHE/helm-$HELM_VERSION/helm" "$@"; }

cleanup() {
  helm uninstall "$release" -n "$ns" --wait --timeout 60s >/dev/null 2>&1 || true
  k delete namespace "$ns" "$restricted_ns" --wait=false --ignore-not-found >/dev/null 2>&1
  rm -rf "$work"
}
on_exit cleanup
# A run that died half-way may have left its release behind.
cleanup; work="$(mktemp -d)"
eventually 120 bash -c "! '$KUBECTL' get namespace '$ns' >/dev/null 2>&1"

# Multi-document YAML on stdin -> a JSON array of the objects.
yaml_to_json() {
  python3 -c 'import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))'
}

# --- lint and the values schema ---------------------------------------------------------
check "helm lint --strict (default values)" helm lint --strict "$chart"
check "helm lint --strict (local values)" helm lint --strict "$chart" -f "$local_values"
check "helm lint --strict (ServiceMonitor, PrometheusRule, no namespace, extra env, pull secrets)" \
  helm lint --strict "$chart" --set metrics.serviceMonitor.enabled=true \
  --set metrics.prometheusRule.enabled=true --set namespace.create=false \
  --set 'imagePullSecrets[0].name=regcred' --set 'extraEnv[0].name=HTTPS_PROXY' \
  --set 'extraEnv[0].value=http://proxy:3128'
packaged() {
  local listing
  helm package "$chart" --destination "$work/package" >/dev/null &&
  listing="$(tar -tzf "$work"/package/lifeboat-*.tgz)" &&
  grep -qx 'lifeboat/values.schema.json' <<<"$listing" &&
  grep -qx 'lifeboat/files/prometheus-rules.yaml' <<<"$listing" &&
  helm lint --strict "$work"/package/lifeboat-*.tgz >/dev/null
}
check "helm package: the packaged chart has its schema and rules file and lints" packaged

# rejected VALUE-ARGS... MESSAGE: helm template must fail, naming the problem.
rejected() {
  local message="${*: -1}" out
  if out="$(helm template x "$chart" "${@:1:$#-1}" 2>&1)"; then
    echo "accepted: ${*:1:$#-1}"; return 1
  fi
  grep -qF -- "$message" <<<"$out" || { echo "rejected, but not with '$message':"; echo "$out"; return 1; }
}
check "schema: a string for replicaCount is rejected" \
  rejected --set replicaCount=two "at '/replicaCount': got string, want integer"
check "schema: a string for hostNetwork is rejected" \
  rejected --set-string hostNetwork=yes "at '/hostNetwork': got string, want boolean"
check "schema: an unknown top-level key (a typo) is rejected" \
  rejected --set replicas=2 "additional properties 'replicas' not allowed"
check "schema: an unknown pull policy is rejected" \
  rejected --set image.pullPolicy=Sometimes "at '/image/pullPolicy'"
check "schema: a log format other than json/text is rejected" \
  rejected --set operator.logFormat=xml "at '/operator/logFormat'"
check "schema: a relative containerd socket path is rejected" \
  rejected --set nodeExporter.containerdSocket=containerd.sock "at '/nodeExporter/containerdSocket'"
check "schema: a malformed image digest is rejected" \
  rejected --set image.digest=sha256:abc "at '/image/digest'"
check "two replicas without leader election are rejected" \
  rejected --set leaderElection.enabled=false "replicaCount > 1 needs leaderElection.enabled"

# --- what the chart renders -------------------------------------------------------------
render() { helm template "$release" "$chart" --namespace "$ns" "$@"; }
env_of() { # env_of JSON NAME -> the operator container's env value
  jq -r --arg n "$2" '.[] | select(.kind=="Deployment") | .spec.template.spec.containers[0].env[] | select(.name==$n) | .value' <<<"$1"
}
defaults="$(render | yaml_to_json)"
local_render="$(render -f "$local_values" | yaml_to_json)"
defaults_image() {
  local image; image="$(jq -r '.[] | select(.kind=="Deployment") | .spec.template.spec.containers[0].image' <<<"$defaults")"
  local app_version; app_version="$(awk -F'"' '/^appVersion:/ {print $2}' "$chart/Chart.yaml")"
  [[ "$image" == "ghcr.io/lifeboat-dev/lifeboat-operator:$app_version" ]] || { echo "image $image"; return 1; }
  [[ "$(env_of "$defaults" LIFEBOAT_NODE_EXPORTER_IMAGE)" == "ghcr.io/lifeboat-dev/node-exporter:$app_version" ]]
}
check "defaults: images are the documented registry paths tagged with the appVersion" defaults_image
defaults_ha() {
  jq -e '.[] | select(.kind=="Deployment") | .spec.replicas == 2 and (.spec.template.spec.hostNetwork | not)' <<<"$defaults" >/dev/null &&
  [[ "$(env_of "$defaults" LIFEBOAT_LEADER_ELECTION)" == true ]] &&
  jq -e '[.[] | select(.kind=="PodDisruptionBudget")] | length == 1' <<<"$defaults" >/dev/null
}
check "defaults: two replicas with leader election and a PodDisruptionBudget, no host network" defaults_ha
local_settings() {
  jq -e '.[] | select(.kind=="Deployment") | .spec.template.spec.hostNetwork == true and
    .spec.template.spec.containers[0].image == "lifeboat.local/lifeboat-operator:dev" and
    .spec.template.spec.containers[0].imagePullPolicy == "Never"' <<<"$local_render" >/dev/null &&
  [[ "$(env_of "$local_render" LIFEBOAT_PLAIN_HTTP_REGISTRIES)" == "127.0.0.1:5001" ]] &&
  [[ "$(env_of "$local_render" LIFEBOAT_NODE_EXPORTER_IMAGE)" == "lifeboat.local/node-exporter:dev" ]] &&
  [[ "$(env_of "$local_render" LIFEBOAT_NODE_EXPORTER_HOST_NETWORK)" == true ]]
}
check "local values: host network, the :dev images never pulled, plain-HTTP source registry" local_settings
node_exporter_settings() {
  local json
  json="$(render --set nodeExporter.containerdSocket=/run/k3s/containerd/containerd.sock \
    --set 'nodeExporter.tolerations[0].key=dedicated' --set 'nodeExporter.tolerations[0].operator=Exists' \
    --set 'imagePullSecrets[0].name=regcred' --set 'extraEnv[0].name=HTTPS_PROXY' \
    --set 'extraEnv[0].value=http://proxy:3128' | yaml_to_json)"
  [[ "$(env_of "$json" LIFEBOAT_CONTAINERD_SOCKET)" == /run/k3s/containerd/containerd.sock ]] &&
  [[ "$(env_of "$json" LIFEBOAT_NODE_EXPORTER_TOLERATIONS)" == '[{"key":"dedicated","operator":"Exists"}]' ]] &&
  [[ "$(env_of "$json" LIFEBOAT_IMAGE_PULL_SECRETS)" == regcred ]] &&
  [[ "$(env_of "$json" HTTPS_PROXY)" == http://proxy:3128 ]] &&
  jq -e '.[] | select(.kind=="Deployment") | .spec.template.spec.imagePullSecrets == [{"name":"regcred"}]' <<<"$json" >/dev/null
}
check "node-exporter settings, pull secrets and extra env reach the operator's environment" node_exporter_settings
credentials_rbac_rendered() {
  local json
  # Default: the reader ClusterRole exists but is bound nowhere.
  jq -e '[.[] | select(.kind=="ClusterRole" and (.metadata.name | endswith("-credentials-reader")))] | length == 1' <<<"$defaults" >/dev/null &&
  jq -e '[.[] | select(.kind=="ClusterRoleBinding" and (.metadata.name | endswith("-credentials-reader")))] | length == 0' <<<"$defaults" >/dev/null &&
  jq -e '[.[] | select(.kind=="ClusterRole") | .rules[] | select(.resources | index("secrets"))] | length == 1' <<<"$defaults" >/dev/null &&
  json="$(render --set 'rbac.credentials.namespaces={team-a,team-b}' \
    --set-json 'tenancy.tolerations=[{"key":"dedicated","operator":"Exists"}]' | yaml_to_json)" &&
  jq -e '[.[] | select(.kind=="RoleBinding" and (.metadata.name | endswith("-credentials-reader"))) | .metadata.namespace] == ["team-a","team-b"]' <<<"$json" >/dev/null &&
  [[ "$(env_of "$json" LIFEBOAT_TENANT_TOLERATIONS)" == '[{"key":"dedicated","operator":"Exists"}]' ]] &&
  [[ "$(env_of "$json" LIFEBOAT_TENANT_NODE_SELECTOR_KEYS)" == kubernetes.io/hostname ]] &&
  [[ "$(env_of "$json" LIFEBOAT_NODE_EXPORTER_CONTROL_PLANE)" == false ]] &&
  json="$(render --set rbac.credentials.clusterWide=true | yaml_to_json)" &&
  jq -e '[.[] | select(.kind=="ClusterRoleBinding" and (.metadata.name | endswith("-credentials-reader")))] | length == 1' <<<"$json" >/dev/null
}
check "credentials: a reader ClusterRole bound only in listed namespaces (or cluster-wide when opted in); tenant allowlists reach the environment" credentials_rbac_rendered

# ServiceMonitor and PrometheusRule: the cluster has no monitoring.coreos.com
# CRDs (and gets none from a test: it is shared), so the API server cannot
# check them. Their structure is checked here instead; everything else the
# chart renders is checked by the API server below.
monitoring="$(render --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true | yaml_to_json)"
service_monitor_selects_the_service() {
  jq -e '
    (.[] | select(.kind=="Service")) as $svc |
    (.[] | select(.kind=="ServiceMonitor")) as $sm |
    $sm.apiVersion == "monitoring.coreos.com/v1" and
    ($sm.spec.selector.matchLabels | to_entries | all(.key as $k | .value == $svc.metadata.labels[$k])) and
    ($sm.spec.namespaceSelector.matchNames == [$svc.metadata.namespace]) and
    ($sm.spec.endpoints[0].port as $p | any($svc.spec.ports[]; .name == $p)) and
    $sm.spec.endpoints[0].path == "/metrics"' <<<"$monitoring" >/dev/null
}
check "ServiceMonitor selects the metrics Service by its labels and port name" service_monitor_selects_the_service
prometheus_rule_has_the_rules_file() {
  local file
  file="$(yaml_to_json <"$chart/files/prometheus-rules.yaml" | jq -c '.[0].groups')"
  jq -e --argjson groups "$file" '.[] | select(.kind=="PrometheusRule") |
    .apiVersion == "monitoring.coreos.com/v1" and .spec.groups == $groups and
    ($groups | length > 0) and all($groups[].rules[]; (.alert // .record) and .expr)' <<<"$monitoring" >/dev/null
}
check "PrometheusRule carries the groups of files/prometheus-rules.yaml" prometheus_rule_has_the_rules_file
broken_rules_file_fails() {
  cp -r "$chart" "$work/chart"
  echo "not: [groups" >"$work/chart/files/prometheus-rules.yaml"
  ! helm template x "$work/chart" --set metrics.prometheusRule.enabled=true >/dev/null 2>&1
}
check "a rules file without groups fails the render instead of an empty PrometheusRule" broken_rules_file_fails

# The Containerfiles cannot be built here (no container engine); check that
# they agree with the workspace, the chart and the local image build: the
# package and binary exist, the entrypoint is where lifeboat-images.sh puts
# the binary, and the user is the one the chart's securityContext names.
containerfiles_agree() {
  local metadata user file package bin
  metadata="$(cargo metadata --locked --no-deps --format-version 1 --manifest-path "$REPO_ROOT/Cargo.toml")" || return 1
  user="$(jq -r '.[] | select(.kind=="Deployment") | .spec.template.spec.securityContext | "\(.runAsUser):\(.runAsGroup)"' <<<"$defaults")"
  for file in operator/Containerfile node-exporter/Containerfile; do
    package="$(grep -o -- '-p [a-z-]*' "$REPO_ROOT/$file" | awk '{print $2}')"
    bin="$(grep -o 'target/release/[a-z-]*' "$REPO_ROOT/$file" | head -1 | sed 's|.*/||')"
    jq -e --arg p "$package" --arg b "$bin" \
      'any(.packages[]; .name == $p and any(.targets[]; .name == $b and (.kind | index("bin"))))' <<<"$metadata" >/dev/null ||
      { echo "$file: no binary $bin in package $package"; return 1; }
    grep -qx "ENTRYPOINT \[\"/usr/local/bin/$bin\"\]" "$REPO_ROOT/$file" || { echo "$file: entrypoint"; return 1; }
    grep -q -- "--binary \"\$bin:/usr/local/bin/" "$REPO_ROOT/hack/images/lifeboat-images.sh" || { echo "lifeboat-images.sh path"; return 1; }
    grep -qx "USER $user" "$REPO_ROOT/$file" || { echo "$file: user is not $user"; return 1; }
    grep -q -- "--user $user" "$REPO_ROOT/hack/images/lifeboat-images.sh" || { echo "lifeboat-images.sh: user is not $user"; return 1; }
  done
}
check "Containerfiles agree with the workspace, the chart's user and the local image build" containerfiles_agree

check "config/ and the chart's crds/ are the chart rendered (hack/render-manifests.sh --check)" \
  "$REPO_ROOT/hack/render-manifests.sh" --check

# --- the API server accepts everything ---------------------------------------------------
k create namespace "$ns" >/dev/null
k label namespace "$ns" pod-security.kubernetes.io/enforce=privileged \
  pod-security.kubernetes.io/audit=privileged pod-security.kubernetes.io/warn=privileged >/dev/null
# dry_run FILE: server-side apply, dry run, unknown or misspelt fields rejected.
dry_run() {
  k apply --server-side --dry-run=server --validate=strict --force-conflicts \
    --field-manager=lifeboat-helm-e2e -f "$1"
}
render --include-crds --set namespace.create=true >"$work/default.yaml"
check "default values: every object, CRDs included, passes a server-side dry run" dry_run "$work/default.yaml"
render -f "$local_values" >"$work/local.yaml"
check "local values: every object passes a server-side dry run" dry_run "$work/local.yaml"
# Everything but the two monitoring.coreos.com objects (checked above).
render --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true \
  --set 'imagePullSecrets[0].name=regcred' --set 'extraEnv[0].name=HTTPS_PROXY' --set 'extraEnv[0].value=x' |
  yaml_to_json | jq '{apiVersion: "v1", kind: "List", items: [.[] | select(.apiVersion | startswith("monitoring.coreos.com") | not)]}' \
  >"$work/monitoring.json"
check "monitoring, pull secrets and extra env: the other objects pass a server-side dry run" dry_run "$work/monitoring.json"
# config/default through a kustomize overlay of its own (the documented way
# to change it) that moves it into this suite's namespace.
mkdir -p "$work/overlay"
cat >"$work/overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $ns
resources:
  - $(realpath --relative-to="$work/overlay" "$REPO_ROOT/config/default")
YAML
kustomized() {
  k kustomize "$work/overlay" >"$work/kustomized.yaml" &&
  grep -q '^kind: CustomResourceDefinition' "$work/kustomized.yaml" &&
  grep -q '^kind: Deployment' "$work/kustomized.yaml" &&
  dry_run "$work/kustomized.yaml"
}
check "config/default builds with kustomize and passes a server-side dry run" kustomized

# --- Pod Security: the operator's pod meets "restricted" ---------------------------------
k create namespace "$restricted_ns" >/dev/null
k label namespace "$restricted_ns" pod-security.kubernetes.io/enforce=restricted >/dev/null
# The Deployment's pod template as a Pod; Pod Security admission runs on dry runs.
operator_pod() {
  jq '.[] | select(.kind=="Deployment") | {apiVersion: "v1", kind: "Pod",
    metadata: {name: "psa-probe", labels: .spec.template.metadata.labels},
    spec: (.spec.template.spec | del(.serviceAccountName))}' <<<"$defaults"
}
admitted_restricted() { operator_pod | jq "$1" | k -n "$restricted_ns" create --dry-run=server -f - ; }
check "the operator's pod (default values) is admitted at the restricted level" admitted_restricted .
not_admitted_without() {
  local out
  if out="$(admitted_restricted "$1" 2>&1)"; then echo "admitted: $1"; return 1; fi
  grep -q "violates PodSecurity \"restricted" <<<"$out" || { echo "$out"; return 1; }
}
# The control: the same probe fails when the pod gives up one restriction.
check "control: without runAsNonRoot the same pod is refused" not_admitted_without 'del(.spec.securityContext.runAsNonRoot)'
check "control: with privilege escalation allowed the same pod is refused" \
  not_admitted_without '.spec.containers[0].securityContext.allowPrivilegeEscalation = true'

# --- a real install -----------------------------------------------------------------------
check "Lifeboat images build and load into the nodes" "$REPO_ROOT/hack/images/lifeboat-images.sh"
install_start=$SECONDS
check "helm install (local values) comes up within 180 s" \
  helm install "$release" "$chart" --namespace "$ns" -f "$local_values" \
  --set operator.httpPort="$port" --wait --timeout 180s
two_ready() {
  [[ "$(k -n "$ns" get deploy "$operator" -o jsonpath='{.status.readyReplicas}')" == 2 ]] || return 1
  local nodes; nodes="$(k -n "$ns" get pods -l app.kubernetes.io/component=operator -o jsonpath='{.items[*].spec.nodeName}')"
  [[ "$(tr ' ' '\n' <<<"$nodes" | sort -u | wc -l)" == 2 ]] || { echo "pods on: $nodes"; return 1; }
}
# helm --wait counts a Deployment ready at replicas - maxUnavailable.
check "two replicas are Ready, on different nodes" eventually 90 two_ready
echo "    (helm install to two Ready replicas: $((SECONDS - install_start)) s)"

# The operator's running pods, not those on their way out.
pods() {
  k -n "$ns" get pods -l app.kubernetes.io/component=operator -o json |
    jq -r '.items[] | select(.status.phase == "Running" and .metadata.deletionTimestamp == null) | .metadata.name'
}
holder() { k -n "$ns" get lease lifeboat-operator -o jsonpath='{.spec.holderIdentity}'; }
# Exactly one replica leads: the Lease in this namespace names it, its log says
# it started the controllers, and no other replica's log does.
one_leader() {
  local leader pod leading=()
  leader="$(holder)" || return 1
  for pod in $(pods); do
    if grep -q 'leading: starting controllers' <<<"$(k -n "$ns" logs "$pod")"; then leading+=("$pod"); fi
  done
  [[ "${#leading[@]}" == 1 && "${leading[0]}" == "$leader" ]] ||
    { echo "lease holder '$leader', pods that started controllers: ${leading[*]:-none}"; return 1; }
}
check "exactly one leader: the Lease holder, the only replica running controllers" eventually 60 one_leader
endpoints_ready() {
  local pod
  for pod in $(pods); do
    [[ "$(k get --raw "/api/v1/namespaces/$ns/pods/$pod:$port/proxy/readyz")" == ok* ]] || { echo "$pod not ready"; return 1; }
    # (A standby has recorded nothing yet: an empty 200 is its right answer.)
    k get --raw "/api/v1/namespaces/$ns/pods/$pod:$port/proxy/metrics" >/dev/null || return 1
  done
  [[ "$(k -n "$ns" get endpointslices -l kubernetes.io/service-name="$operator-metrics" \
    -o jsonpath='{range .items[*].endpoints[*]}{.conditions.ready}{"\n"}{end}' | grep -c true)" == 2 ]]
}
check "both replicas answer /readyz and /metrics; the metrics Service has both" eventually 30 endpoints_ready
pod_security() {
  jq -e '.spec.securityContext.runAsNonRoot == true and .spec.securityContext.runAsUser == 65532 and
    .spec.containers[0].securityContext.readOnlyRootFilesystem == true' \
    <<<"$(k -n "$ns" get pod "$(holder)" -o json)" >/dev/null
}
check "the running pods are non-root with a read-only root filesystem" pod_security

# Least privilege, as the API server's authorizer sees it.
sa="system:serviceaccount:$ns:$operator"
can() { [[ "$(k auth can-i --as="$sa" "$@" 2>/dev/null)" == yes ]]; }
cannot() { ! can "$@"; }
rbac() {
  can create jobs.batch -n "$ns" && cannot create jobs.batch -n default &&
  can delete jobs.batch -n "$ns" && cannot delete jobs.batch -n default &&
  can create secrets -n "$ns" && cannot create secrets -n default &&
  can delete secrets -n "$ns" && cannot delete secrets -n kube-system &&
  cannot list secrets -n "$ns" && cannot list secrets -n default && cannot watch secrets -n default &&
  can get secrets -n "$ns" && can get configmaps -n "$ns" &&
  cannot get secrets -n default && cannot get secrets -n kube-system && cannot get configmaps -n default &&
  can list pods -A && can watch deployments.apps -A && cannot create pods -n default &&
  cannot patch pods -n default && cannot create pods/exec -n default && cannot delete deployments.apps -n default &&
  can update leases.coordination.k8s.io -n "$ns" && cannot update leases.coordination.k8s.io -n kube-system &&
  can patch imagebackuppolicies.lifeboat.dev --subresource=status -n default &&
  cannot patch imagebackuppolicies.lifeboat.dev -n default && cannot delete imagebackuppolicies.lifeboat.dev -n default &&
  can create imagerestores.lifeboat.dev -n default && can delete imagerestores.lifeboat.dev -n default && can update imagerestores.lifeboat.dev --subresource=finalizers -n default &&
  cannot create clusterroles.rbac.authorization.k8s.io
}
check "RBAC: Jobs and Secrets only in its namespace (can-i get secrets -n default: no), no Secret listing, read-only elsewhere but pod deletion" rbac

# The standby takes over when the leader goes (lease 15 s, renewed every 5 s).
old_leader="$(holder)"
k -n "$ns" delete pod "$old_leader" --wait=false >/dev/null
new_leader() { local h; h="$(holder)"; [[ -n "$h" && "$h" != "$old_leader" ]] && grep -q 'leading: starting controllers' <<<"$(k -n "$ns" logs "$h")"; }
failover_start=$SECONDS
check "failover: the standby leads within 40 s of the leader's deletion" eventually 40 new_leader
echo "    (failover took $((SECONDS - failover_start)) s)"
check "after failover the Deployment is back to two Ready replicas" \
  k -n "$ns" rollout status deploy/"$operator" --timeout=120s

# An upgrade changes a setting and rolls the pods.
check "helm upgrade with a changed setting" \
  helm upgrade "$release" "$chart" --namespace "$ns" -f "$local_values" \
  --set operator.httpPort="$port" --set operator.sourceCheckIntervalSeconds=45 --wait --timeout 180s
upgraded() {
  local pod
  [[ "$(k -n "$ns" get deploy "$operator" -o jsonpath='{.status.updatedReplicas}/{.status.readyReplicas}')" == 2/2 ]] || return 1
  for pod in $(pods); do
    [[ "$(k -n "$ns" get pod "$pod" -o jsonpath='{.spec.containers[0].env[?(@.name=="LIFEBOAT_SOURCE_CHECK_INTERVAL_SECONDS")].value}')" == 45 ]] || return 1
  done
}
check "after the upgrade both replicas run with the new setting" eventually 60 upgraded
check "after the upgrade exactly one replica leads" eventually 60 one_leader

# Opt-in: cluster-wide credential reads, with the risk docs/security.md states.
check "helm upgrade with rbac.credentials.clusterWide=true" \
  helm upgrade "$release" "$chart" --namespace "$ns" -f "$local_values" \
  --set operator.httpPort="$port" --set operator.sourceCheckIntervalSeconds=45 \
  --set rbac.credentials.clusterWide=true --wait --timeout 180s
cluster_wide_read() { can get secrets -n default && can get secrets -n kube-system && cannot list secrets -n default; }
check "... then can-i get secrets -n default is yes (and still no listing)" eventually 30 cluster_wide_read

# --- uninstall ------------------------------------------------------------------------------
check "helm uninstall" helm uninstall "$release" --namespace "$ns" --wait --timeout 120s
nothing_left() {
  local left
  left="$(k -n "$ns" get deploy,sa,role,rolebinding,service,pdb -l app.kubernetes.io/instance="$release" -o name)"
  left+="$(k get clusterrole,clusterrolebinding -l app.kubernetes.io/instance="$release" -o name)"
  [[ -z "$left" ]] || { echo "left behind: $left"; return 1; }
  k get crd imagebackuppolicies.lifeboat.dev imagerestores.lifeboat.dev >/dev/null
}
check "uninstall removes every object of the release and keeps the CRDs" nothing_left

summary helm-chart
