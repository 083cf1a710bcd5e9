#!/usr/bin/env bash
# Installs the real programs the operations tests run against shardroute:
# - Prometheus (Debian's package), which scrapes serve nodes and evaluates every dashboard query;
# - systemd (for systemd-analyze verify of the shipped unit);
# - grpcurl, a generic gRPC client (reflection and grpc.health.v1), built from the Go module
#   proxy with its caches under ~/.cache/shardroute-interop.
# Idempotent: what is already installed is skipped, so a second run takes seconds.
set -euo pipefail
CACHE=${SHARDROUTE_INTEROP_CACHE:-$HOME/.cache/shardroute-interop}
GRPCURL_VERSION=v1.9.3
mkdir -p "$CACHE/bin" "$CACHE/logs"

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  # The tests run their own Prometheus; the package's service is neither wanted nor started.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "installed ${missing[*]}"
fi

stamp="$CACHE/bin/.grpcurl-$GRPCURL_VERSION"
if [ ! -x "$CACHE/bin/grpcurl" ] || [ ! -f "$stamp" ]; then
  GOBIN="$CACHE/bin" GOMODCACHE="$CACHE/gomod" GOCACHE="$CACHE/gocache" GOFLAGS=-trimpath \
    go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
  touch "$stamp"
  echo "built grpcurl $GRPCURL_VERSION in $CACHE/bin"
fi
