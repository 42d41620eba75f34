#!/usr/bin/env bash
# Full tenancy stack against the bare handler, for axum and actix-web, with wrk on loopback,
# all in one run. Usage (from the workspace root):
#   adapters/tenancy-actix/examples/wrk_bench.sh [duration, default 10s] [connections, default 64]
# Environment: PROFILE (default production: the workspace's fat-LTO profile, as a service
# ships; `release` for the quicker build without LTO); VARIANTS (default
# "bare full full-noaudit full-nocache"); FRAMEWORKS (default "axum actix"; `axum-percore` is
# axum on one single-threaded runtime per thread, as actix-web serves); ROUNDS (default 1):
# with more, every framework and variant is measured once per round, rounds interleaved (every
# other round in reverse order, so that a drift of the machine favours no variant), and the
# medians are summarised at the end: of requests per second, and of each round's own ratio to
# the bare handler measured in that round (steadier on a machine shared with other work, whose
# speed can move by a fifth within a minute).
# Columns: requests per second, wrk's p50 and p99 latency, the server process's CPU time
# (user + system, all its threads) per request, read from /proc; the machine's idle time and
# its busy time outside the server (wrk, the kernel's network work, anything else), per
# request, from /proc/stat: where the time per request goes besides the server; and the
# server's CPU time split by thread name (the request workers, and the audit writer's
# `tenancy-audit` thread). Variants: `bare`, `busy<N>` (the bare handler busy for N µs of
# CPU per request: what any N µs of work costs the framework here), `full`, `full-noaudit`,
# `full-nocache` (see bench_server.rs).
set -euo pipefail
DURATION="${1:-10s}"
CONNECTIONS="${2:-64}"
ROUNDS="${ROUNDS:-1}"
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
PROFILE="${PROFILE:-production}"
cargo build --profile "$PROFILE" -p tenancy-actix --example bench_server >&2
BIN="${CARGO_TARGET_DIR:-target}/$PROFILE/examples/bench_server"
PORT=18080
CLK="$(getconf CLK_TCK)"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# "idle busy" ticks of the whole machine (idle and iowait; everything else).
machine() { awk '/^cpu / {idle = $5 + $6; busy = 0; for (i = 2; i <= 9; i++) busy += $i; print idle, busy - idle}' /proc/stat; }
# "name ticks" for every thread of a process (names with spaces joined by _).
thread_ticks() {
  for t in /proc/"$1"/task/*; do
    printf '%s %s\n' "$(tr ' ' _ < "$t/comm")" "$(awk '{print $14 + $15}' "$t/stat")"
  done
}
RESULTS="$(mktemp)"
trap 'rm -f "$RESULTS" /tmp/bench_server.$$.out' EXIT
printf '%-5s %-12s %-13s %12s %10s %10s %12s %8s %8s  %s\n' round framework variant "req/s" "p50" "p99" "cpu us/req" idle others "by thread (us/req)"
ALL_VARIANTS="${VARIANTS:-bare full full-noaudit full-nocache}"
ALL_FRAMEWORKS="${FRAMEWORKS:-axum actix}"
# The words of $1 in reverse order.
reversed() { echo "$1" | tr ' ' '\n' | tac | tr '\n' ' '; }
for round in $(seq "$ROUNDS"); do
  frameworks="$ALL_FRAMEWORKS"; variants="$ALL_VARIANTS"
  if [ $((round % 2)) = 0 ]; then
    frameworks="$(reversed "$frameworks")"; variants="$(reversed "$variants")"
  fi
  for framework in $frameworks; do
    for variant in $variants; do
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
      before="$(ticks "$pid")"
      machine_before="$(machine)"
      threads_before="$(thread_ticks "$pid")"
      out="$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "Authorization: Bearer $token" "$url")"
      after="$(ticks "$pid")"
      machine_after="$(machine)"
      threads_after="$(thread_ticks "$pid")"
      kill "$pid"; wait "$pid" 2>/dev/null || true
      rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
      p50="$(echo "$out" | awk '$1=="50%" {print $2}')"
      p99="$(echo "$out" | awk '$1=="99%" {print $2}')"
      requests="$(echo "$out" | awk '/requests in/ {print $1}')"
      non2xx="$(echo "$out" | awk '/Non-2xx/ {print $5}')"
      [ -z "$non2xx" ] || { echo "$framework $variant: $non2xx non-2xx answers" >&2; exit 1; }
      cpu="$(awk -v t=$((after - before)) -v clk="$CLK" -v n="$requests" 'BEGIN { printf "%.1f", t / clk * 1e6 / n }')"
      read -r idle others < <(echo "$machine_before $machine_after" | awk -v s=$((after - before)) -v clk="$CLK" -v n="$requests" '
        { printf "%.1f %.1f\n", ($3 - $1) / clk * 1e6 / n, ($4 - $2 - s) / clk * 1e6 / n }')
      # Per thread name, summed over threads of that name, only threads that ran.
      by_thread="$(paste <(echo "$threads_before") <(echo "$threads_after") | awk -v clk="$CLK" -v n="$requests" '
        { d[$1] += $4 - $2 } END { for (k in d) if (d[k] > 0) printf "%s=%.1f ", k, d[k] / clk * 1e6 / n }')"
      printf '%-5s %-12s %-13s %12s %10s %10s %12s %8s %8s  %s\n' "$round" "$framework" "$variant" "$rps" "$p50" "$p99" "$cpu" "$idle" "$others" "$by_thread"
      echo "$framework $variant $rps $cpu $round $idle $others" >> "$RESULTS"
    done
  done
done
if [ "$ROUNDS" -gt 1 ]; then
  median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
  echo
  echo "medians over $ROUNDS rounds (ratio: median req/s over the framework's median bare req/s;"
  echo "paired: the median of each round's req/s over the same round's bare req/s)"
  printf '%-12s %-13s %12s %8s %8s %12s %8s %8s\n' framework variant "req/s" ratio paired "cpu us/req" idle others
  for framework in $ALL_FRAMEWORKS; do
    bare="$(awk -v f="$framework" '$1==f && $2=="bare" {print $3}' "$RESULTS" | median)"
    for variant in $ALL_VARIANTS; do
      rps="$(awk -v f="$framework" -v v="$variant" '$1==f && $2==v {print $3}' "$RESULTS" | median)"
      cpu="$(awk -v f="$framework" -v v="$variant" '$1==f && $2==v {print $4}' "$RESULTS" | median)"
      idle="$(awk -v f="$framework" -v v="$variant" '$1==f && $2==v {print $6}' "$RESULTS" | median)"
      others="$(awk -v f="$framework" -v v="$variant" '$1==f && $2==v {print $7}' "$RESULTS" | median)"
      paired="$(awk -v f="$framework" -v v="$variant" '
        $1==f && $2=="bare" {b[$5]=$3} $1==f && $2==v {x[$5]=$3}
        END {for (r in x) if (b[r] > 0) print x[r] / b[r]}' "$RESULTS" | median)"
      printf '%-12s %-13s %12.0f %8.2f %8.2f %12.1f %8.1f %8.1f\n' "$framework" "$variant" "$rps" \
        "$(awk -v a="$rps" -v b="$bare" 'BEGIN {print a / b}')" "$paired" "$cpu" "$idle" "$others"
    done
  done
fi
