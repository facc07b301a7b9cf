#!/usr/bin/env bash
# Installs the real upstream parts ferrokube runs against, once per version:
#   - Debian packages (runc, the Distribution registry, CNI plugins, ...);
#   - kube-apiserver, kubectl, kube-scheduler, kube-controller-manager and kubelet built from
#     the k8s.io/kubernetes Go module through a wrapper module (no registry ships them);
#   - etcd built the same way around go.etcd.io/etcd/server/v3;
#   - kwok and helm through `go install`.
# Binaries land in "$FERROKUBE_CACHE/bin/<name>-<version>" and are checked by running them
# (`--version`) before they are put in place, so a half-finished build is never used.
#
# Usage: hack/provision.sh [--no-apt]
# Prints the binary directory on its last line.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

# shellcheck source=lib.sh
source "$here/lib.sh"
cache=$FERROKUBE_CACHE
bin="$cache/bin"
mkdir -p "$bin" "$cache/go-build" "$cache/logs"

# The machine's Go 1.26 is the one we build with: Go 1.27 enables the jsonv2 experiment,
# which breaks the apiserver's protobuf /openapi/v2 (kubectl apply then fails).
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
export GOCACHE="$cache/go-build"
case "$(go env GOVERSION)" in
  go1.27*|go1.28*) export GOEXPERIMENT=nojsonv2 ;;
esac

log() { printf '[provision] %s\n' "$*" >&2; }

apt_packages=(
  runc                          # OCI runtime for the kubelet
  containerd                    # CRI runtime of the kubelet benchmark's upstream peer
  docker-registry               # OCI distribution registry on 127.0.0.1
  containernetworking-plugins   # CNI bridge, host-local, loopback, portmap
  nftables iproute2             # pod networking on the node
  busybox-static                # the tests' container images are built from it
  util-linux                    # unshare, nsenter
  wrk                           # load generator for the ingress benchmark
  nginx-light                   # the ingress benchmark's peer (started by hand, own config)
  ca-certificates
)

install_apt() {
  local missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian registry package starts a system service on :5000; ours runs per cluster.
  if command -v systemctl >/dev/null 2>&1; then
    $sudo systemctl disable --now docker-registry >/dev/null 2>&1 || true
    # Debian's nginx starts a system service on :80; the benchmark runs its own.
    $sudo systemctl disable --now nginx >/dev/null 2>&1 || true
    # Debian's containerd starts a system service; the kubelet benchmark runs its own.
    $sudo systemctl disable --now containerd >/dev/null 2>&1 || true
  fi
}

# Checks a built binary by running it and looking for the expected version in its output.
verify() { # <path> <expected> <args...>
  local path=$1 want=$2
  shift 2
  local out
  out=$("$path" "$@" 2>&1 || true)
  if ! grep -qF -- "$want" <<<"$out"; then
    log "$path $*: expected '$want' in: $out"
    return 1
  fi
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION
  local staging=v0.${v#v1.}
  local names=(kube-apiserver kubectl kube-scheduler kube-controller-manager kubelet)
  # Only what is missing is built: a cache provisioned before a name was added keeps the rest.
  local missing=()
  for n in "${names[@]}"; do [ -x "$bin/$n-$v" ] || missing+=("$n"); done
  [ ${#missing[@]} -eq 0 ] && return 0

  local mod="$cache/src/kubernetes-$v"
  mkdir -p "$mod"
  log "building kubernetes $v (${missing[*]}) in $mod; log: $cache/logs/build-kubernetes.log"
  (
    cd "$mod"
    # Every k8s.io/<staging> module that k8s.io/kubernetes replaces with ./staging/... is
    # published as its own module at v0.<minor>.<patch>; point the wrapper at those.
    go mod download -json "k8s.io/kubernetes@$v" >download.json
    local gomod
    gomod=$(sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p' download.json)
    {
      echo "module ferrokube.local/upstream-kubernetes"
      echo
      grep -E '^go [0-9]' "$gomod"
      grep -E '^godebug ' "$gomod" || true
      echo
      echo "require k8s.io/kubernetes $v"
      echo
      echo "replace ("
      sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\t\1 => \1 '"$staging"'#p' "$gomod"
      echo ")"
    } >go.mod
    cat >tools.go <<'EOF'
//go:build tools

// Package tools pins the upstream commands this wrapper module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOF
    go mod tidy
    local ldflags="-s -w"
    local minor=${v#v1.}
    minor=${minor%%.*}
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    mkdir -p out
    go build -trimpath -ldflags "$ldflags" -o out/ "${missing[@]/#/k8s.io/kubernetes/cmd/}"
  ) >"$cache/logs/build-kubernetes.log" 2>&1 || { tail -30 "$cache/logs/build-kubernetes.log" >&2; return 1; }
  for n in "${missing[@]}"; do
    case "$n" in
      kubectl) verify "$mod/out/$n" "$v" version --client ;;
      *) verify "$mod/out/$n" "$v" --version ;;
    esac
  done
  for n in "${missing[@]}"; do mv -f "$mod/out/$n" "$bin/$n-$v"; done
}

build_etcd() {
  local v=$ETCD_VERSION
  [ -x "$bin/etcd-$v" ] && return 0
  local mod="$cache/src/etcd-$v"
  mkdir -p "$mod"
  log "building etcd $v; log: $cache/logs/build-etcd.log"
  (
    cd "$mod"
    printf 'module ferrokube.local/upstream-etcd\n\ngo 1.25\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$v" >go.mod
    printf '//go:build tools\n\n// Package tools pins the etcd server command.\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >tools.go
    go mod tidy
    go build -trimpath -ldflags "-s -w" -o out/etcd go.etcd.io/etcd/server/v3
  ) >"$cache/logs/build-etcd.log" 2>&1 || { tail -30 "$cache/logs/build-etcd.log" >&2; return 1; }
  verify "$mod/out/etcd" "etcd Version: ${v#v}" --version
  mv -f "$mod/out/etcd" "$bin/etcd-$v"
}

go_install() { # <name> <version> <package> <extra-ldflags> <version-args...>
  local name=$1 v=$2 pkg=$3 ldflags="-s -w $4"
  shift 4
  [ -x "$bin/$name-$v" ] && return 0
  local gobin="$cache/src/$name-$v"
  mkdir -p "$gobin"
  log "go install $pkg@$v; log: $cache/logs/build-$name.log"
  GOBIN="$gobin" go install -trimpath -ldflags "$ldflags" "$pkg@$v" >"$cache/logs/build-$name.log" 2>&1 ||
    { tail -30 "$cache/logs/build-$name.log" >&2; return 1; }
  verify "$gobin/$name" "${v#v}" "$@"
  mv -f "$gobin/$name" "$bin/$name-$v"
}

# The stable names the harness and users call: <bin>/current/<name> -> <name>-<version>.
link_current() {
  mkdir -p "$bin/current"
  local n
  for n in kube-apiserver kubectl kube-scheduler kube-controller-manager kubelet; do
    ln -sfn "../$n-$KUBERNETES_VERSION" "$bin/current/$n"
  done
  ln -sfn "../etcd-$ETCD_VERSION" "$bin/current/etcd"
  ln -sfn "../kwok-$KWOK_VERSION" "$bin/current/kwok"
  ln -sfn "../helm-$HELM_VERSION" "$bin/current/helm"
}

main() {
  local apt=1
  for a in "$@"; do
    case "$a" in
      --no-apt) apt=0 ;;
      *) log "unknown argument: $a"; exit 2 ;;
    esac
  done
  [ $apt -eq 1 ] && install_apt
  build_etcd
  build_kubernetes
  go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok "" --version
  # helm reports only major.minor unless its version variable is set at link time.
  go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" version --short
  link_current
  echo "$bin/current"
}

main "$@"
