#!/usr/bin/env bash
# Full tenancy stack against the bare handler, for axum and actix-web, with wrk on loopback,
# all in one run. Usage (from the workspace root):
#   adapters/tenancy-actix/examples/wrk_bench.sh [duration, default 10s] [connections, default 64]
set -euo pipefail
DURATION="${1:-10s}"
CONNECTIONS="${2:-64}"
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "wrk not found; installing it with apt-get" >&2
    apt-get install -y wrk >&2 || { apt-get update >&2 && apt-get install -y wrk >&2; }
  else
    echo "wrk is not installed: install it (Debian/Ubuntu: sudo apt-get install -y wrk) and rerun" >&2
    exit 1
  fi
fi
for tool in curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is not installed" >&2; exit 1; }
done
cargo build --release -p tenancy-actix --example bench_server >&2
BIN="target/release/examples/bench_server"
PORT=18080
printf '%-6s %-13s %12s %10s %10s\n' framework variant "req/s" "p50" "p99"
for framework in axum actix; do
  for variant in ${VARIANTS:-bare full full-noaudit full-nocache}; do
    PORT=$((PORT + 1))
    "$BIN" "$framework" "$variant" "$PORT" > /tmp/bench_server.$$.out &
    pid=$!
    for _ in $(seq 50); do
      if curl -s -o /dev/null "http://127.0.0.1:$PORT/v1/records"; then break; fi
      sleep 0.1
    done
    token="$(head -n1 /tmp/bench_server.$$.out)"
    url="http://127.0.0.1:$PORT/v1/records"
    status="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$url")"
    [ "$status" = 200 ] || { echo "$framework $variant answered $status" >&2; kill "$pid"; exit 1; }
    wrk -t1 -c"$CONNECTIONS" -d2s -H "Authorization: Bearer $token" "$url" > /dev/null
    out="$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "Authorization: Bearer $token" "$url")"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
    p50="$(echo "$out" | awk '$1=="50%" {print $2}')"
    p99="$(echo "$out" | awk '$1=="99%" {print $2}')"
    non2xx="$(echo "$out" | awk '/Non-2xx/ {print $5}')"
    [ -z "$non2xx" ] || { echo "$framework $variant: $non2xx non-2xx answers" >&2; exit 1; }
    printf '%-6s %-13s %12s %10s %10s\n' "$framework" "$variant" "$rps" "$p50" "$p99"
  done
done
rm -f /tmp/bench_server.$$.out
