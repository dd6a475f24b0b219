#!/usr/bin/env bash
# What a namespace needs before its ImageBackupPolicies can use the local
# cluster's backup registry: the registry's credentials and CA, and (outside
# the operator's namespace) the RoleBinding that lets the operator read them.
# Sourced, after env.sh, by tests/e2e/lib.sh and hack/demo.sh. Each helper
# applies what it creates, so running it again (a re-run demo) changes nothing.

# apply_created ARGS...: `kubectl create ARGS`, applied instead of created.
apply_created() {
  "$KUBECTL" create "$@" --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
}

# grant_credentials NS: what a team does so the operator may read the
# Secrets and ConfigMaps its policies name: a RoleBinding in its namespace to
# the chart's credentials-reader ClusterRole (docs/security.md).
grant_credentials() {
  apply_created rolebinding lifeboat-credentials-reader --namespace "$1" \
    --clusterrole lifeboat-credentials-reader --serviceaccount lifeboat-system:lifeboat-operator
}

# registry_secret NS NAME SERVER: a docker-registry Secret with the backup
# registry's credentials for SERVER (the backup registry, or a relay to it).
registry_secret() {
  apply_created secret docker-registry "$2" --namespace "$1" --docker-server="$3" \
    --docker-username="$BACKUP_REGISTRY_USER" --docker-password="$BACKUP_REGISTRY_PASSWORD"
}

# backup_registry_secrets NS: the Secret `backup-credentials` (basic auth)
# and the ConfigMap `backup-ca` (the cluster CA) that policies in NS use to
# reach the backup registry; without the RoleBinding.
backup_registry_secrets() {
  registry_secret "$1" backup-credentials "$BACKUP_REGISTRY"
  apply_created configmap backup-ca --namespace "$1" --from-file=ca.crt="$CLUSTER_PKI/ca.crt"
}

# backup_registry_access NS: grant_credentials, then backup_registry_secrets.
backup_registry_access() {
  grant_credentials "$1"
  backup_registry_secrets "$1"
}

# backup_target TEMPLATE [NAME] [REGISTRY] [SECRET]: the YAML of one item of
# an ImageBackupPolicy's spec.targets (indented to follow "  targets:") that
# writes to the backup registry (or REGISTRY) under repositoryTemplate
# TEMPLATE (none when empty: the operator's default), with the credentials
# and CA of backup_registry_secrets.
backup_target() {
  cat <<YAML
  - name: ${2:-backup}
    registry: ${3:-$BACKUP_REGISTRY}
${1:+    repositoryTemplate: \"$1\"
}    secretRef: {name: ${4:-backup-credentials}}
    caBundle: {configMapKeyRef: {name: backup-ca, key: ca.crt}}
YAML
}
