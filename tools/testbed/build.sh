#!/usr/bin/env bash
# Builds the real Kubernetes control plane used by the tests and the dev cluster, from the Go module proxy.
# Binaries are cached outside the repository, keyed by version, so a second run builds nothing.
#   tools/testbed/build.sh            -> prints the bin directory on the last line of stdout
# Env: DEEPSEEK_TESTBED_CACHE (default ~/.cache/deepseek-operator/testbed)
set -euo pipefail

K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${DEEPSEEK_TESTBED_CACHE:-$HOME/.cache/deepseek-operator/testbed}"
bin="$cache/bin-k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}-helm-${HELM_VERSION}"
mkdir -p "$bin"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
start=$(date +%s)
built=()

log() { echo "[testbed] $*" >&2; }

# Build into a temporary name and rename, so an interrupted build never leaves a half-written binary.
need() { [ -x "$bin/$1" ] || return 0; return 1; }

if need kube-apiserver || need kube-controller-manager || need kube-scheduler || need kubectl; then
  log "building Kubernetes $K8S_VERSION (cold: several minutes)"
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  date_now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  ldf="-s -w -buildid="
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldf="$ldf -X $p.gitTreeState=clean -X $p.buildDate=$date_now"
  done
  tmp="$(mktemp -d "$bin/.build.XXXX")"
  (cd "$here/k8sbin" && go build -trimpath -tags=selinux,notest,grpcnotrace -ldflags="$ldf" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  mv "$tmp"/* "$bin/" && rmdir "$tmp"
  built+=(kubernetes)
fi

if need etcd; then
  log "building etcd $ETCD_VERSION"
  (cd "$here/etcdbin" && go build -trimpath -ldflags "-s -w" -o "$bin/.etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$bin/.etcd.tmp" "$bin/etcd"
  built+=(etcd)
fi

if need kwok; then
  log "building kwok $KWOK_VERSION"
  GOBIN="$bin/.kwok" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  mv "$bin/.kwok/kwok" "$bin/kwok" && rmdir "$bin/.kwok"
  built+=(kwok)
fi

if [ ! -f "$bin/kwok-stages.yaml" ]; then
  # kwok >= 0.8 has no built-in stages: take the upstream "fast" stage set from its module source.
  moddir="$(cd "$(mktemp -d)" && GOFLAGS= go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  {
    for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
             pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      cat "$moddir/kustomize/stage/$f"; echo "---"
    done
  } > "$bin/.kwok-stages.tmp"
  mv "$bin/.kwok-stages.tmp" "$bin/kwok-stages.yaml"
fi

if need helm; then
  log "building helm $HELM_VERSION"
  GOBIN="$bin/.helm" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$bin/.helm/helm" "$bin/helm" && rmdir "$bin/.helm"
  built+=(helm)
fi

if [ ${#built[@]} -gt 0 ]; then
  log "built ${built[*]} in $(( $(date +%s) - start ))s"
else
  log "all binaries cached in $bin"
fi
echo "$bin"
