#!/usr/bin/env bash
# Installs the third-party libp2p peers the interop tests start:
# - rust-libp2p and current go-libp2p-kad-dht, built from tests/interop/peers/{rust,go} with
#   their build caches outside the clone (a second run on the same machine takes seconds);
# - go-libp2p-kad-dht v0.20 (PyPI libp2p-go) and py-libp2p (PyPI libp2p) in their own
#   virtualenvs, js-libp2p from the npm lock file, and Helia's Delegated Routing V1 HTTP API
#   client (npm, cached outside the clone).
# Idempotent. Any failure fails the script, so CI fails; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .interop
PY=${INTEROP_PYTHON:-python3}
CACHE=${SHARDROUTE_INTEROP_CACHE:-$HOME/.cache/shardroute-interop}
mkdir -p "$CACHE/bin" "$CACHE/logs"

build_go() {
  (cd tests/interop/peers/go && GOFLAGS=-mod=readonly go build -trimpath -o "$CACHE/bin/go-peer" .)
}

build_rust() {
  CARGO_TARGET_DIR="$CACHE/rust-target" cargo build --quiet --release --locked \
    --manifest-path tests/interop/peers/rust/Cargo.toml
  cp "$CACHE/rust-target/release/rust-peer" "$CACHE/bin/rust-peer"
}

# The native builds take minutes on a fresh machine: they run while the rest installs.
build_go > "$CACHE/logs/go-build.log" 2>&1 &
go_build=$!
build_rust > "$CACHE/logs/rust-build.log" 2>&1 &
rust_build=$!

install_venv() {  # name, marker module, packages...
  local name=$1 marker=$2; shift 2
  local dir=.interop/$name
  if [ -f "$dir/.done" ]; then return; fi
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --upgrade pip
  "$dir/bin/python" -m pip install -q "$@"
  "$dir/bin/python" -c "import $marker"
  touch "$dir/.done"
  echo "installed $name: $*"
}

# go-libp2p bindings need the old multiaddr API (shared/interop-peers.md).
install_venv go-venv libp2p.main "libp2p-go==0.1.4" "multiaddr==0.0.9" "msgpack==1.2.4"
install_venv py-venv libp2p.kad_dht "libp2p==0.8.1"

if [ -f tests/interop/peers/js/package-lock.json ] && [ ! -d tests/interop/peers/js/node_modules/libp2p ]; then
  (cd tests/interop/peers/js && npm ci --no-audit --no-fund --loglevel=error)
  echo "installed js-libp2p"
fi

# Helia's Delegated Routing V1 HTTP client: installed from its lock file into the cache,
# reinstalled only when the lock changes; the clone gets a node_modules link to it.
install_routing_client() {
  local src=tests/interop/peers/routing-v1-client dir=$CACHE/routing-v1-client
  if ! cmp -s "$src/package-lock.json" "$dir/package-lock.json" || [ ! -d "$dir/node_modules" ]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$src/package.json" "$src/package-lock.json" "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "installed @helia/delegated-routing-v1-http-api-client in $dir"
  fi
  ln -sfn "$dir/node_modules" "$src/node_modules"
}
install_routing_client

status=0
for build in "go:$go_build" "rust:$rust_build"; do
  name=${build%%:*}
  if ! wait "${build#*:}"; then
    echo "building the $name interop peer failed:" >&2
    tail -n 40 "$CACHE/logs/$name-build.log" >&2
    status=1
  fi
done
[ "$status" -eq 0 ] && echo "built go-peer and rust-peer in $CACHE/bin"
exit "$status"
