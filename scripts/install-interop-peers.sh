#!/usr/bin/env bash
# Installs the third-party libp2p peers the interop tests start: go-libp2p (PyPI libp2p-go),
# py-libp2p (PyPI libp2p) in their own virtualenvs, and js-libp2p from the npm lock file.
# Idempotent: a finished install is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .interop
PY=${INTEROP_PYTHON:-python3}

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
install_venv go-venv libp2p.main "libp2p-go==0.1.4" "multiaddr==0.0.9" msgpack
install_venv py-venv libp2p.kad_dht "libp2p==0.8.1"

if [ -f tests/interop/peers/js/package-lock.json ] && [ ! -d tests/interop/peers/js/node_modules/libp2p ]; then
  (cd tests/interop/peers/js && npm ci --no-audit --no-fund --loglevel=error)
  echo "installed js-libp2p"
fi
