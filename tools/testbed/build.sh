#!/usr/bin/env bash
# Builds the real Kubernetes control plane used by the tests and the dev cluster, from the Go module proxy.
# Binaries are cached outside the repository, keyed by version, so a second run builds nothing.
#   tools/testbed/build.sh            -> prints the bin directory on the last line of stdout (progress: stderr)
# Env: DEEPSEEK_TESTBED_CACHE (default ~/.cache/deepseek-operator/testbed); the usual GOMODCACHE/GOCACHE/GOPROXY.
# Safe to run concurrently (a lock serialises builds) and after an interrupted build (binaries are written under
# temporary names and renamed into place).
set -euo pipefail

K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
# Recipe revisions: bump one when its build flags change, so cached binaries of that family are rebuilt while
# the others (the Kubernetes build takes ~9 minutes) stay. A missing stamp counts as revision 1.
K8S_REV=1
ETCD_REV=1
KWOK_REV=1
HELM_REV=2 # 2: default Kubernetes version for `helm template`/`helm lint` set like upstream's Makefile

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${DEEPSEEK_TESTBED_CACHE:-$HOME/.cache/deepseek-operator/testbed}"
bin="$cache/bin-k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}-helm-${HELM_VERSION}"
start=$(date +%s)
built=()

log() { echo "[testbed] $*" >&2; }

rev_of() { cat "$bin/.rev-$1" 2>/dev/null || echo 1; }
# stale FAMILY REV BINARY... -> true if any binary is missing or the family was built by an older recipe
stale() {
  local family=$1 rev=$2
  shift 2
  [ "$(rev_of "$family")" = "$rev" ] || return 0
  for b in "$@"; do [ -x "$bin/$b" ] || return 0; done
  return 1
}
anything_stale() {
  stale kubernetes "$K8S_REV" kube-apiserver kube-controller-manager kube-scheduler kubectl ||
    stale etcd "$ETCD_REV" etcd || stale kwok "$KWOK_REV" kwok || stale helm "$HELM_REV" helm
}

if ! anything_stale; then
  log "all binaries cached in $bin"
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || {
  log "Go is required to build the control plane (Go >= 1.26, from https://go.dev/dl or the distribution)"
  exit 1
}
mkdir -p "$bin"
# One build at a time per cache (two test sessions starting on a fresh machine would otherwise both build);
# the second waits here and then finds everything built.
exec 9>"$cache/.build.lock"
if ! flock -n 9; then
  log "another build is running; waiting for it (lock $cache/.build.lock)"
  flock 9
fi
tmp="$(mktemp -d "$bin/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
log "using $(go version)"

if stale kubernetes "$K8S_REV" kube-apiserver kube-controller-manager kube-scheduler kubectl; then
  log "building Kubernetes $K8S_VERSION (cold: ~9 minutes on 2 cores, module downloads included)"
  minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  date_now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  # Without these the binaries report v0.0.0-master, which breaks helm's kubeVersion checks and kwokctl.
  ldf="-s -w -buildid="
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldf="$ldf -X $p.gitTreeState=clean -X $p.buildDate=$date_now"
  done
  (cd "$here/k8sbin" && go build -trimpath -tags=selinux,notest,grpcnotrace -ldflags="$ldf" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  "$tmp/kube-apiserver" --version | grep -qx "Kubernetes $K8S_VERSION" || {
    log "kube-apiserver reports '$("$tmp/kube-apiserver" --version)', expected Kubernetes $K8S_VERSION"
    exit 1
  }
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do mv "$tmp/$b" "$bin/$b"; done
  echo "$K8S_REV" >"$bin/.rev-kubernetes"
  built+=(kubernetes)
fi

if stale etcd "$ETCD_REV" etcd; then
  log "building etcd $ETCD_VERSION"
  (cd "$here/etcdbin" && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
  mv "$tmp/etcd" "$bin/etcd"
  echo "$ETCD_REV" >"$bin/.rev-etcd"
  built+=(etcd)
fi

if stale kwok "$KWOK_REV" kwok; then
  log "building kwok $KWOK_VERSION"
  GOBIN="$tmp" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  mv "$tmp/kwok" "$bin/kwok"
  echo "$KWOK_REV" >"$bin/.rev-kwok"
  built+=(kwok)
fi

if stale helm "$HELM_REV" helm; then
  log "building helm $HELM_VERSION"
  # Like helm's own Makefile: the Kubernetes version assumed without a cluster (helm template, helm lint) is
  # the one of the client-go that helm is built with (v0.X.Y -> 1.X).
  helm_mod="$(GOFLAGS= go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  client_go="$(awk '$1 == "k8s.io/client-go" {print $2}' "$helm_mod")"
  kminor="$(echo "$client_go" | cut -d. -f2)"
  [ -n "$kminor" ] || {
    log "could not read k8s.io/client-go's version from $helm_mod"
    exit 1
  }
  hldf="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    hldf="$hldf -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$kminor"
  done
  GOBIN="$tmp" go install -trimpath -ldflags "$hldf" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$tmp/helm" "$bin/helm"
  echo "$HELM_REV" >"$bin/.rev-helm"
  built+=(helm)
fi

if [ ${#built[@]} -gt 0 ]; then
  log "built ${built[*]} in $(($(date +%s) - start))s into $bin"
else
  log "all binaries cached in $bin (built by a concurrent run)"
fi
echo "$bin"
