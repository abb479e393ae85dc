#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build autotel and run its
# tests. Idempotent: installs only what is missing. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (sudo make setup): it installs Debian packages" >&2
  exit 1
fi

# Build: clang compiles the BPF C; libelf/zlib/pkg-config for libbpf-sys.
# Tests: the real peers and tools the integration tests drive.
PACKAGES=(clang llvm libelf-dev zlib1g-dev pkg-config make
          bpftool nginx-light curl wrk iproute2 tmux prometheus python3-venv
          postgresql mariadb-server mariadb-client redis-server redis-tools memcached
          nftables tcpdump dnsmasq-base bind9-dnsutils
          etcd-server golang-go golang-google-grpc-dev openssl rsync gnutls-bin wget
          socat busybox)

# Node.js for the trace-context tests (any recent version already present will do).
command -v node >/dev/null 2>&1 || PACKAGES+=(nodejs)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # Debian's prometheus package starts its own service on install; we only
  # want the binaries (tests start their own server on a private port).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust stable (https://rustup.rs) and re-run" >&2
  exit 1
fi

# cargo-fuzz for the bounded fuzz run of `make test`.
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo install cargo-fuzz --locked -q
fi

# A real kube-apiserver (built once from Debian's kubernetes source package)
# for the Kubernetes metadata tests; etcd-server above is its store.
bash scripts/kube-apiserver.sh

# Python packages for the integration tests (official OTel decoders, grpcio).
PY=${PYTHON:-python3}
if ! "$PY" -c "import opentelemetry.proto, grpc, pytest, prometheus_client, requests, opentelemetry.instrumentation.auto_instrumentation, opentelemetry.instrumentation.requests,  psycopg, pymysql, pymemcache, redis, grpc_health, h2, hypercorn, mysql.connector, dns.query" 2>/dev/null; then
  echo "setup: installing Python test packages"
  "$PY" -m pip install -q -r tests/requirements.txt
fi
echo "setup: done"
