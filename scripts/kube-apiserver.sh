#!/usr/bin/env bash
# Builds a real kube-apiserver for tests/integration/test_kubernetes.py from
# Debian's `kubernetes` source package (1.20.x, vendored Go modules, no network
# beyond Debian's archive), cached in ~/.cache/autotel-kube/kube-apiserver.
# Idempotent: a no-op when the cached binary exists and answers --version.
# Needs root for apt (deb-src lines, golang-go). Takes ~3-10 minutes once (2 cores).
set -euo pipefail

CACHE=${AUTOTEL_KUBE_CACHE:-$HOME/.cache/autotel-kube}
BIN="$CACHE/kube-apiserver"

if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
  echo "kube-apiserver: cached $("$BIN" --version) at $BIN"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "kube-apiserver.sh: run as root: it adds deb-src lines and installs golang-go" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# deb-src for bookworm, unless some sources file already has one.
if ! grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > /etc/apt/sources.list.d/autotel-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -q
fi
for p in golang-go dpkg-dev make rsync; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    { apt-get update -q && apt-get install -y -q --no-install-recommends "$p"; }
done

mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/src.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
echo "kube-apiserver: fetching Debian source package kubernetes"
apt-get source -q --download-only kubernetes
dpkg-source --no-check -x kubernetes_*.dsc src >/dev/null
cd src
# Debian's own way (debian/rules): a GOPATH with the tree linked in, then the
# project's make, which first generates the code a release tarball lacks
# (openapi, deepcopy, conversions). Vendored modules only: no network.
mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
echo "kube-apiserver: building (go $(go env GOVERSION)); this takes a few minutes"
start=$(date +%s)
env GOPATH="$PWD/.go" HOME="$WORK/home" GOPROXY=off GOFLAGS= CGO_ENABLED=0 \
  GOCACHE="$WORK/gocache" make WHAT=cmd/kube-apiserver >"$WORK/build.log" 2>&1 ||
  { tail -40 "$WORK/build.log" >&2; echo "kube-apiserver: build failed" >&2; exit 1; }
install -m 0755 _output/bin/kube-apiserver "$BIN"
echo "kube-apiserver: built $("$BIN" --version) in $(( $(date +%s) - start )) s -> $BIN"
