#!/usr/bin/env bash
# docs/bench-cluster.sh MODE SCENARIO [BENCH ARGS...]: one instance vs three (docs/BENCHMARKS.md)
#   MODE: single (one chatd, no NATS), or 1 / 3 (that many chatd instances in cluster mode)
# Needs `cargo build --release --features bench` and SecantusDB (or another MongoDB-wire
# server) already listening on $MONGO_PORT; starts NATS and chatd itself, runs chatd-bench
# with one --url and --pid per instance, and prints one line of figures. SCRAPE=1 also prints
# each instance's bus and delivery counters.
set -euo pipefail
B=${B:-target/release}   # run from the repository root
MONGO_PORT=${MONGO_PORT:-27750}
NATS_PORT=${NATS_PORT:-4350}
SECRET=bench-cluster-secret
mode=$1; shift
W=$(mktemp -d /tmp/chatd-cluster.XXXX)
db=bench_$(date +%s%N)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, clock ticks (100/s)
HZ=$(getconf CLK_TCK)

pids=(); args=()
cleanup() { for p in "${pids[@]}" ${NATS:-}; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

env_cluster=()
if [[ $mode != single ]]; then
  nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$W/nats" >"$W/nats.log" 2>&1 & NATS=$!
  until grep -q "Server is ready" "$W/nats.log"; do sleep 0.05; done
  env_cluster=(NATS_URL=nats://127.0.0.1:$NATS_PORT)
  n=$mode
else
  n=1
fi
for i in $(seq 1 "$n"); do
  port=$((8100 + i))
  env HOST=127.0.0.1 PORT=$port DATA_DIR="$W/data$i" RATE_LIMIT_RPS=0 RUST_LOG=warn \
    JWT_SECRET=$SECRET MONGO_URI=mongodb://127.0.0.1:$MONGO_PORT MONGO_DB=$db \
    INSTANCE_ID=chat-$i MAX_PARTICIPANTS=1000 "${env_cluster[@]}" \
    "$B/chatd" --ready-file "$W/ready$i" 2>>"$W/chatd$i.log" & pids+=($!)
  args+=(--url http://127.0.0.1:$port --pid $!)
done
for i in $(seq 1 "$n"); do until [[ -s $W/ready$i ]]; do sleep 0.05; done; done

load=$(cut -d' ' -f1-3 /proc/loadavg)
[[ -n ${NATS:-} ]] && nats0=$(ticks "$NATS")
t0=$(date +%s.%N)
"$B/chatd-bench" "$@" --secret $SECRET "${args[@]}" --json > "$W/out.json"
[[ -n ${NATS:-} ]] && nats1=$(ticks "$NATS")
if [[ -n ${SCRAPE:-} ]]; then for i in $(seq 1 "$n"); do curl -s http://127.0.0.1:$((8100 + i))/metrics | grep -E '^chat_(bus_[a-z_]+|messages_(accepted|delivered)_total|slow_consumer_disconnects_total|fanout_missed_events_total)' >&2; done; fi
wall=$(echo "$(date +%s.%N) - $t0" | bc)

python3 - "$W/out.json" "$mode" "$load" "${nats0:-}" "${nats1:-}" "$HZ" "$*" "$wall" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); mode, load, n0, n1, hz, cmd, wall = sys.argv[2:9]
nats_s = (int(n1) - int(n0)) / int(hz) if n0 else None
if s.get("accepted", 0) == 0:
    print(f"{mode:>6} | {cmd} | load {load} | nats cpu {nats_s} s over {float(wall):.1f} s"); sys.exit()
nats = nats_s * 1e6 / s["accepted"] if n0 else None
print(f"{mode:>6} | {cmd} | load {load} | sent {s['sent']} acc {s['accepted']} err {s['errors']} "
      f"deliv {s['delivered']}/{s['expected_deliveries']} | p50 {s['latency_p50_ms']:.2f} "
      f"p99 {s['latency_p99_ms']:.2f} p999 {s['latency_p999_ms']:.2f} ms | REST p99 {s['rest_p99_ms']:.2f} | "
      f"chatd cpu/deliv {s['server_cpu_us_per_delivery']:.1f} us "
      f"(parts {[round(x['cpu_us_per_delivery'],1) for x in s.get('servers', [])]}) | "
      f"nats cpu/msg {'-' if nats is None else f'{nats:.1f}'} us ({nats_s} s over {float(wall):.1f} s) | rss {s['server_rss_kib']}")
PY
