#!/usr/bin/env bash
# Installs shardroute with its test tools and the third-party interop peers, checks lint,
# types and generated code, then runs the whole test suite. This is the README's test command
# and what CI runs on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[test]"

scripts/install-interop-peers.sh
scripts/install-ops-tools.sh

# The multi-host tests build network namespaces (iproute2) and a NAT router (nftables).
if ! command -v nft >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables iproute2 >/dev/null
fi

echo "== generated protobuf modules are current"
scripts/check_proto.sh
echo "== ruff"
ruff check .
echo "== mypy"
mypy
echo "== pytest"
set +e
python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: the suite is broken" >&2
  exit 1
fi
exit "$status"
