#!/usr/bin/env bash
# Regenerates shardroute/pb/ from proto/. The .proto paths mirror the package path, so the
# generated imports need no rewriting. CI runs this and fails when the output differs.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t all < <(find proto -name '*.proto' | sort)
python -m grpc_tools.protoc -I proto --python_out=. --pyi_out=. "${all[@]}"
mapfile -t services < <(grep -l '^service ' "${all[@]}" || true)
if [ "${#services[@]}" -gt 0 ]; then
  python -m grpc_tools.protoc -I proto --grpc_python_out=. "${services[@]}"
fi
