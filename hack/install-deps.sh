#!/usr/bin/env bash
# Installs the Debian packages Lifeboat's build and tests need. Idempotent:
# does nothing (and does not touch apt) when everything is already there.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# command-or-file -> package
declare -A wanted=(
  [containerd]=containerd
  [runc]=runc
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [/bin/busybox]=busybox-static
  [openssl]=openssl
  [protoc]=protobuf-compiler
  [iptables]=iptables
  [conntrack]=conntrack
  [jq]=jq
  [htpasswd]=apache2-utils
  [curl]=curl
  [socat]=socat
  # YAML to JSON in the chart tests (tests/e2e/helm-chart.sh).
  [/usr/lib/python3/dist-packages/yaml/__init__.py]=python3-yaml
  # promtool: unit tests of the Prometheus alerts (config/monitoring).
  [promtool]=prometheus
)

missing=()
for probe in "${!wanted[@]}"; do
  if [[ "$probe" == /* ]]; then
    [[ -e "$probe" ]] || missing+=("${wanted[$probe]}")
  else
    command -v "$probe" >/dev/null 2>&1 || missing+=("${wanted[$probe]}")
  fi
done
# busybox (non-static) may satisfy /bin/busybox; the pause image needs the static one.
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)

if ((${#missing[@]} == 0)); then
  exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
log "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# An old or absent package list makes apt-get install fail: refresh once.
if [[ ! -d /var/lib/apt/lists ]] || [[ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]]; then
  apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian packages start services we do not want: the cluster runs its own
# containerd and registries with their own configs and sockets, and only
# promtool of the prometheus package is used.
for svc in containerd docker-registry prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
    systemctl disable "$svc" >/dev/null 2>&1 || true
  fi
done
log "Debian packages installed"
