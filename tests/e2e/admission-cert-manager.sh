#!/usr/bin/env bash
# The admission webhook's cert-manager path on the real API server
# (docs/admission.md#certificates): cert-manager's own controller, webhook and
# cainjector (hack/build-cert-manager.sh) run as processes on this machine
# against the cluster, the chart is rendered with admission.certManager and
# the default Service endpoint:
#  - cert-manager's webhook admits the chart's Issuers and Certificates, the
#    controller issues the serving certificate from the chart's CA, the
#    cainjector puts that CA into the webhook's caBundle;
#  - the operator serves cert-manager's certificate and never writes the
#    caBundle itself;
#  - `kubectl apply` gets the webhook's warning through the Service;
#  - cert-manager renews the serving certificate: the operator serves the
#    new one within seconds and the caBundle (the CA) does not change.
#
# The local cluster has no kube-proxy, so the API server cannot reach a
# Service IP. For the length of the suite two iptables rules on this machine
# do kube-proxy's job for the webhook's Service alone: its ClusterIP:443 is
# sent to the address and port its EndpointSlice lists.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns="adm-cm-e2e-$RANDOM"
webhook=lifeboat-operator-admission
secret="$webhook-tls"
cm_dir="$LIFEBOAT_BIN_CACHE/cert-manager-$CERT_MANAGER_VERSION"
work="$(mktemp -d)"
# cert-manager's webhook on this machine (the API server calls it at
# https://localhost:PORT, the name its own CA certifies).
cm_webhook_port=19443
echo "admission webhook with cert-manager $CERT_MANAGER_VERSION e2e (namespace $ns)"

helper_pids=()
dnat_rule=()
snat_rule=()
cleanup() {
  k delete namespace "$ns" --wait=false --ignore-not-found
  k delete validatingwebhookconfiguration "$webhook" --ignore-not-found
  k -n lifeboat-system delete secret "$secret" "$webhook-ca" --ignore-not-found
  k -n lifeboat-system delete service "$webhook" --ignore-not-found
  ((${#dnat_rule[@]} == 0)) || iptables -t nat -D OUTPUT "${dnat_rule[@]}"
  ((${#snat_rule[@]} == 0)) || iptables -t nat -D POSTROUTING "${snat_rule[@]}"
  # Deleting the CRDs deletes every Issuer and Certificate with them.
  k delete validatingwebhookconfiguration cert-manager-webhook --ignore-not-found
  k delete mutatingwebhookconfiguration cert-manager-webhook --ignore-not-found
  k delete -f "$cm_dir/crds.yaml" --ignore-not-found --wait=false
  local pid
  for pid in "${helper_pids[@]}"; do kill "$pid"; done
  k delete namespace cert-manager --wait=false --ignore-not-found
  k apply -f "$REPO_ROOT/config/operator"
  rm -rf "$work"
}
on_exit cleanup

check "cert-manager $CERT_MANAGER_VERSION is built (cached)" "$REPO_ROOT/hack/build-cert-manager.sh"
"$REPO_ROOT/hack/build-helm.sh" >/dev/null
helm="$LIFEBOAT_BIN_CACHE/helm-$HELM_VERSION/helm"

# --- cert-manager: CRDs, its three processes, its webhook's configurations --------------
cm_crds_established() {
  k apply --server-side --force-conflicts -f "$cm_dir/crds.yaml" >/dev/null &&
    k wait --for condition=established --timeout=30s -f "$cm_dir/crds.yaml" >/dev/null
}
check "cert-manager's CRDs apply and are established" cm_crds_established
k create namespace cert-manager --dry-run=client -o yaml | k apply -f - >/dev/null
# start NAME BINARY ARGS...: runs a cert-manager binary in the background,
# its log in the work directory.
start_cm() {
  local name="$1"; shift
  KUBECONFIG="$KUBECONFIG_ADMIN" "$cm_dir/$name" "$@" >"$work/$name.log" 2>&1 &
  helper_pids+=($!)
}
start_cm controller --kubeconfig "$KUBECONFIG_ADMIN" --leader-elect=false \
  --cluster-resource-namespace cert-manager --metrics-listen-address 127.0.0.1:0 --v=1
start_cm cainjector --kubeconfig "$KUBECONFIG_ADMIN" --leader-elect=false --v=1
start_cm webhook --kubeconfig "$KUBECONFIG_ADMIN" --secure-port "$cm_webhook_port" --healthz-port 0 \
  --dynamic-serving-ca-secret-namespace cert-manager --dynamic-serving-ca-secret-name cert-manager-webhook-ca \
  --dynamic-serving-dns-names localhost --v=1
cm_webhook_configurations() {
  "$helm" template cert-manager "$cm_dir/chart" --namespace cert-manager \
    --set webhook.url.host="localhost:$cm_webhook_port" \
    --show-only templates/webhook-validating-webhook.yaml --show-only templates/webhook-mutating-webhook.yaml |
    k apply -f - >/dev/null
}
check "cert-manager's webhook configurations apply" cm_webhook_configurations
cm_webhook_trusted() {
  [[ -n "$(k get validatingwebhookconfiguration cert-manager-webhook -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" &&
    -n "$(k get mutatingwebhookconfiguration cert-manager-webhook -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]]
}
check "cert-manager's cainjector injects its webhook's CA" eventually 30 cm_webhook_trusted

# --- the chart with certManager: true, the default Service endpoint ---------------------
install_operator
admission_manifests() {
  "$helm" template lifeboat "$REPO_ROOT/helm/lifeboat" --namespace lifeboat-system \
    -f "$REPO_ROOT/hack/values-local.yaml" --set replicaCount=1 \
    --set admission.enabled=true --set admission.certManager=true |
    awk '/^# Source: /{keep = ($3 !~ /namespace.yaml$/)} keep'
}
# cert-manager's webhook answers (and so admits the chart's Issuers and
# Certificates) a moment after its CA is injected.
apply_admission() { admission_manifests | k apply -f - >/dev/null; }
check "the chart's Issuers and Certificates pass cert-manager's webhook" eventually 20 apply_admission
certificate_ready() {
  k -n lifeboat-system wait --for condition=Ready --timeout=30s "certificate/$webhook-ca" "certificate/$webhook" >/dev/null
}
check "cert-manager issues the CA and the serving certificate" certificate_ready
# The CA that issued the serving certificate, as the Secret names it.
ca_of_secret() { k -n lifeboat-system get secret "$secret" -o jsonpath='{.data.ca\.crt}'; }
bundle() { k get validatingwebhookconfiguration "$webhook" -o jsonpath='{.webhooks[0].clientConfig.caBundle}'; }
ca_injected() {
  local ca; ca="$(ca_of_secret)"
  [[ -n "$ca" && "$(bundle)" == "$ca" ]] || { echo "caBundle '$(bundle | head -c 40)...' is not the Secret's ca.crt"; return 1; }
}
check "the cainjector puts the serving certificate's CA into the webhook's caBundle" eventually 30 ca_injected
restart_operator
# A namespace a policy covers (made while the new operator takes the lease).
k create namespace "$ns" >/dev/null
backup_registry_access "$ns"
k -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: guarded}
spec:
  selector: {workloadSelector: {matchLabels: {guard: guarded}}}
  targets:
$(backup_target "e2e/{policyNamespace}/{registry}/{repository}")
YAML

# kube-proxy's job for the webhook's Service alone (see the top of the file).
endpoint_of_service() {
  k -n lifeboat-system get endpointslices -l "kubernetes.io/service-name=$webhook" -o json |
    jq -er '[.items[] | .ports[0].port as $port | .endpoints[] | select(.conditions.ready)
      | "\(.addresses[0]):\($port)"][0] // empty'
}
check "the webhook's Service has the serving operator as its endpoint" eventually 30 endpoint_of_service
cluster_ip="$(k -n lifeboat-system get service "$webhook" -o jsonpath='{.spec.clusterIP}')"
endpoint="$(endpoint_of_service)"
dnat_rule=(-d "$cluster_ip/32" -p tcp --dport 443 -j DNAT --to-destination "$endpoint")
# The nodes route only their bridge: the host's address on it as the source.
snat_rule=(-m conntrack --ctorigdst "$cluster_ip/32" -j SNAT --to-source "${NODE_BRIDGE_CIDR%/*}")
iptables -t nat -A OUTPUT "${dnat_rule[@]}"
iptables -t nat -A POSTROUTING "${snat_rule[@]}"

# serial_served: the serial of the certificate the webhook presents through
# the Service, for its Service name, verified against the caBundle.
serial_served() {
  bundle | base64 -d >"$work/bundle.crt"
  openssl s_client -connect "$cluster_ip:443" -servername "$webhook.lifeboat-system.svc" \
    -verify_hostname "$webhook.lifeboat-system.svc" -CAfile "$work/bundle.crt" -verify_return_error \
    </dev/null 2>/dev/null | openssl x509 -noout -serial
}
serial_of_secret() {
  k -n lifeboat-system get secret "$secret" -o jsonpath='{.data.tls\.crt}' | base64 -d | openssl x509 -noout -serial
}
serves_secret() {
  local served want; served="$(serial_served)"; want="$(serial_of_secret)"
  [[ -n "$want" && "$served" == "$want" ]] || { echo "served '$served', the Secret holds '$want'"; return 1; }
}
check "the operator serves cert-manager's certificate, trusted by the caBundle" eventually 20 serves_secret

# --- the covered namespace: kubectl apply gets the warning through the Service ---------
covers_ns() {
  k get validatingwebhookconfiguration "$webhook" -o jsonpath='{.webhooks[0].namespaceSelector.matchExpressions[0].values}' | grep -q "\"$ns\""
}
check "the operator's namespaceSelector names the covered namespace" eventually 30 covers_ns
# uncovered_warning NAME: a new Deployment NAME of an image the policy does
# not select (no guard label).
uncovered_warning() {
  local out
  out="$(idle_deployment "$1" "$SOURCE_REGISTRY/demo/web:1.0" | k -n "$ns" apply -f - 2>&1)" || { echo "$out"; return 1; }
  grep -q "Warning: lifeboat: image $SOURCE_REGISTRY/demo/web:1.0 is not protected" <<<"$out" || { echo "$out"; return 1; }
}
check "kubectl apply gets the webhook's warning through the Service" uncovered_warning loose
one_ca_untouched() {
  local n; n="$(bundle | base64 -d | grep -c 'BEGIN CERTIFICATE')"
  [[ "$n" == 1 ]] && ca_injected || { echo "$n certificates in the caBundle"; return 1; }
  [[ -z "$(k -n lifeboat-system get secret "$secret" -o jsonpath='{.metadata.annotations.lifeboat\.dev/not-after}')" ]] ||
    { echo "the operator wrote the Secret"; return 1; }
}
check "the operator left the caBundle and the Secret to cert-manager" one_ca_untouched

# --- renewal: what `cmctl renew` does (an Issuing condition on the Certificate) ---------
first_serial="$(serial_of_secret)"
now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
k -n lifeboat-system patch certificate "$webhook" --subresource status --type json -p "[{\"op\": \"add\",
  \"path\": \"/status/conditions/-\", \"value\": {\"type\": \"Issuing\", \"status\": \"True\",
  \"reason\": \"ManuallyTriggered\", \"message\": \"renewal requested by the e2e suite\",
  \"lastTransitionTime\": \"$now\"}}]" >/dev/null
first_bundle="$(bundle)"
renewed() {
  local now; now="$(serial_of_secret)"
  [[ -n "$now" && "$now" != "$first_serial" ]] || { echo "the Secret still holds $now"; return 1; }
}
check "cert-manager renews the serving certificate" eventually 30 renewed
renewed_at=$SECONDS
check "the operator serves the renewed certificate" eventually 20 serves_secret
echo "  measured: the operator served the renewed certificate $((SECONDS - renewed_at)) s after cert-manager wrote it"
check "the caBundle (the chart's CA) did not change" test "$(bundle)" == "$first_bundle"
check "kubectl apply still gets the warning after the renewal" uncovered_warning loose-after-renewal

if ((E2E_FAILED > 0)); then
  for log in "$work"/*.log; do echo "--- cert-manager $(basename "$log" .log), its last errors:"; grep -E '^E[0-9]{4} ' "$log" | tail -5; done
fi
summary admission-cert-manager
