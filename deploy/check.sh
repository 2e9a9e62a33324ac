#!/usr/bin/env bash
# Validates the files under deploy/ with the tools that check each kind, installing what is
# missing (PyPI into a virtualenv under target/, Debian packages with apt-get as root).
# Run by `cargo xtask image check-deploy`. Any finding fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
work=target/deploy-check
mkdir -p "$work"

apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "check-deploy: missing $*; install it and run again" >&2
    exit 1
  fi
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@"
}

# --- Kubernetes: every manifest against the API's own schemas --------------------------------
# kubernetes-validate ships the OpenAPI-derived JSON schemas of each Kubernetes release, so it
# needs no network once installed. --strict refuses unknown fields (a misspelt probe would
# otherwise be dropped by the API server without a word). Checked against the newest release
# it knows and the oldest still commonly run.
venv="$work/venv"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'kubernetes-validate==1.37.0'
fi
for version in 1.37.0 1.29.0; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" deploy/kubernetes/*.yaml
  echo "kubernetes: deploy/kubernetes/*.yaml valid against Kubernetes $version (strict)"
done

# The idgate.toml inside the ConfigMap, read by idgate itself when the release binary exists:
# `idgate plugins --trust` parses the file (unknown keys are refused) and configures every
# plugin with its block (it also exits 1 when a provider's trust material expires within
# trust_warning_days, which is worth failing on before a deployment too).
"$venv/bin/python" - "$work/configmap-idgate.toml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))
open(sys.argv[1], "w").write(doc["data"]["idgate.toml"])
PY
if [ -x target/release/idgate ]; then
  mkdir -p -m 0700 "$work/cache"
  target/release/idgate --config "$work/configmap-idgate.toml" --cache-dir "$work/cache" \
    --plugins target/plugins plugins --trust >"$work/configmap-plugins.txt"
  echo "kubernetes: the ConfigMap's idgate.toml loads and configures every plugin in target/release/idgate" \
    "($(grep -c 'contract' "$work/configmap-plugins.txt") plugins; listing in $work/configmap-plugins.txt)"
else
  echo "kubernetes: target/release/idgate not built; the ConfigMap's idgate.toml was not loaded" >&2
fi

# --- HAProxy ---------------------------------------------------------------------------------
command -v haproxy >/dev/null || apt_install haproxy
haproxy -c -f deploy/haproxy/coder-front.cfg
echo "haproxy: deploy/haproxy/coder-front.cfg valid ($(haproxy -v | head -1 | cut -d' ' -f1-3))"

# --- systemd ---------------------------------------------------------------------------------
command -v systemd-analyze >/dev/null || apt_install systemd
# `verify` also checks that ExecStart's binary exists. Rather than install one into
# /usr/local/bin, a private mount namespace puts a tmpfs there holding the release binary
# (or /bin/true when it is not built), seen by this check only. systemd-analyze prints
# findings but exits 0 for some (an unknown key): any output fails.
binary=target/release/idgate
[ -x "$binary" ] || binary=/bin/true
out=$(unshare --mount --propagation private sh -c '
  mount -t tmpfs -o mode=0755 tmpfs /usr/local/bin &&
  cp "$1" /usr/local/bin/idgate &&
  systemd-analyze verify deploy/systemd/idgate.service 2>&1 &&
  systemd-analyze security --offline=true deploy/systemd/idgate.service 2>&1 | grep "Overall exposure"
' sh "$binary")
verify=$(printf '%s\n' "$out" | grep -v "Overall exposure" || true)
if [ -n "$verify" ]; then
  printf 'systemd: systemd-analyze verify deploy/systemd/idgate.service:\n%s\n' "$verify" >&2
  exit 1
fi
echo "systemd: deploy/systemd/idgate.service verified (ExecStart: $binary);$(printf '%s\n' "$out" | grep "Overall exposure" | sed 's/^→//')"

echo "check-deploy: all passed"
