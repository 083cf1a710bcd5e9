#!/usr/bin/env bash
# Fails when shardroute/pb/ differs from what scripts/gen_proto.sh makes from proto/.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r shardroute/pb "$tmp/before"
scripts/gen_proto.sh
if ! diff -r -x __pycache__ "$tmp/before" shardroute/pb >/dev/null; then
  diff -r -x __pycache__ "$tmp/before" shardroute/pb | head -40
  echo "shardroute/pb is stale: run scripts/gen_proto.sh and commit the result" >&2
  exit 1
fi
