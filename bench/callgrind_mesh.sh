#!/bin/bash
# Instructions per remote_call on a relay node and on the target node, under
# valgrind's callgrind (docs/BENCHMARKS.md, "The mesh under callgrind").
#
#   bench/callgrind_mesh.sh [--counts "2000 6000"] [--conc 16] [--size 16]
#                           [--out bench/results/callgrind-mesh] [--symbols]
#
# The chain of bench/run.py's "remote_call 1 hop" scenario: the relay starts
# first, the target dials it, the caller dials the relay (so both of the
# relay's links are accepted ones, as in run.py):
#   caller -> relay <- target
# It runs four times: the relay under callgrind with N1 and then N2 calls
# (bench/peers/rn_rpc_bench.lua caller --count), then the target the same
# way, the other nodes plain. For each, instructions per call =
# (Ir(N2) - Ir(N1)) / (N2 - N1), so start-up, the links' set-up and
# shutdown cancel out. A relay handles two messages per call (the call one
# way, the response the other), so its cost per forwarded message is half
# its cost per call. bench/cg_diff.py splits the difference per object and
# function (*.diff.txt). Ir counts user-space instructions only: the
# kernel's work in each recvfrom/sendto is not in it.
#
# --symbols runs the profiled node on bench/build/lua5.4-sym (function names
# in the interpreter; bench/lua-symbols.sh builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=bench/results/callgrind-mesh
COUNTS="2000 6000"
CONC=16
SIZE=16
LUA=lua5.4
while [ $# -gt 0 ]; do
  case "$1" in
    --counts) COUNTS="$2"; shift 2 ;;
    --conc) CONC="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --symbols) bench/lua-symbols.sh; LUA=bench/build/lua5.4-sym; shift ;;
    *) echo "usage: bench/callgrind_mesh.sh [--counts \"N1 N2\"] [--conc N] [--size BYTES] [--out DIR] [--symbols]" >&2
       exit 2 ;;
  esac
done
read -r N1 N2 <<<"$COUNTS"
case "$OUT" in /*) ;; *) OUT="$ROOT/$OUT" ;; esac
[ "$N2" -gt "$N1" ] || { echo "callgrind_mesh.sh: N2 must be larger than N1" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "callgrind_mesh.sh: valgrind is missing (bench/setup.sh)" >&2; exit 1; }
[ -f build/relaynet/core.so ] || { echo "callgrind_mesh.sh: run make build first" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT"
export RELAYNET_LIMITS="max_connections=100000,max_connections_per_ip=0,ws_msg_rate=0,ws_byte_rate=0,max_buffered=0"
export LUA_PATH_5_4="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;/usr/share/lua/5.4/?.lua;/usr/share/lua/5.4/?/init.lua;;"
# A private copy of the core: a rebuild during the run (another checkout
# session, make build) must not change the library under the profile.
mkdir -p "$OUT/lib/relaynet"
cp build/relaynet/core.so "$OUT/lib/relaynet/core.so"
export LUA_CPATH_5_4="$OUT/lib/?.so;/usr/lib/x86_64-linux-gnu/lua/5.4/?.so;;"
PORT=$((16000 + $$ % 4000))
PIDS=()

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT

wait_port() { # port pid
  local _
  for _ in $(seq 1 600); do
    kill -0 "$2" 2>/dev/null || return 1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# node PORT ID PEER_PORT(or -) PROFILE(0/1) FILE: starts a node; its pid in NODE_PID
node() {
  local port=$1 id=$2 peer=$3 prof=$4 file=$5 args
  args=(bin/relaynet bench/peers/rn_rpc_bench.lua node --host 127.0.0.1 --port "$port" --node-id "$id")
  [ "$peer" != - ] && args+=(--add-peer "ws://127.0.0.1:$peer/ws/p2p")
  if [ "$prof" = 1 ]; then
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$file.out" "$LUA" "${args[@]}" >"$file.log" 2>&1 &
  else
    taskset -c 0 lua5.4 "${args[@]}" >"$file.log" 2>&1 &
  fi
  NODE_PID=$!
  PIDS+=("$NODE_PID")
}

# run_chain KIND COUNT: runs the chain with KIND (relay or target) under
# callgrind; that node's Ir in CHAIN_IR
run_chain() {
  local kind=$1 count=$2 file="$OUT/$1.n$2" tp rp rpid tpid
  rp=$((PORT += 1)); tp=$((PORT += 1))
  node "$rp" bench-relay1 - "$([ "$kind" = relay ] && echo 1 || echo 0)" "$file.relay"; rpid=$NODE_PID
  wait_port "$rp" "$rpid" || { echo "callgrind_mesh.sh: the relay did not start (see $file.relay.log)" >&2; exit 1; }
  node "$tp" bench-target "$rp" "$([ "$kind" = target ] && echo 1 || echo 0)" "$file.target"; tpid=$NODE_PID
  wait_port "$tp" "$tpid" || { echo "callgrind_mesh.sh: the target did not start (see $file.target.log)" >&2; exit 1; }
  taskset -c 1 lua5.4 bench/peers/rn_rpc_bench.lua caller --peer "ws://127.0.0.1:$rp/ws/p2p" \
    --target bench-target --hops 2 --conc "$CONC" --size "$SIZE" --count "$count" --timeout 60 \
    --ready-timeout 120 >"$file.json" 2>"$file.caller.log" || {
      echo "callgrind_mesh.sh: the caller failed (see $file.json, $file.caller.log)" >&2; exit 1; }
  grep -q '"errors":0,' "$file.json" || { echo "callgrind_mesh.sh: calls failed (see $file.json)" >&2; exit 1; }
  cleanup
  CHAIN_IR=$(awk '/^totals:/ {print $2}' "$file.$kind.out")
  cp "$file.$kind.out" "$OUT/$kind.n$count.out"
}

RESULT="$OUT/summary.txt"
echo "instructions (callgrind Ir) per remote_call of a $SIZE-byte string, $CONC in flight, caller -> relay <- target, (Ir(N2) - Ir(N1)) / (N2 - N1), N1=$N1 N2=$N2" | tee "$RESULT"
declare -A IR
for kind in target relay; do
  run_chain "$kind" "$N1"; a=$CHAIN_IR
  run_chain "$kind" "$N2"; b=$CHAIN_IR
  IR[$kind]=$(( (b - a) / (N2 - N1) ))
  if [ "$kind" = relay ]; then
    printf "%-7s %8s Ir/call, %8s Ir per forwarded message (call or response)\n" "$kind" "${IR[$kind]}" \
      "$(( IR[$kind] / 2 ))" | tee -a "$RESULT"
  else
    printf "%-7s %8s Ir/call served\n" "$kind" "${IR[$kind]}" | tee -a "$RESULT"
  fi
  /usr/bin/python3 bench/cg_diff.py "$N1" "$OUT/$kind.n$N1.out" "$N2" "$OUT/$kind.n$N2.out" --top 30 \
    >"$OUT/$kind.diff.txt"
done
awk -v r="${IR[relay]}" -v t="${IR[target]}" 'BEGIN {
  printf "relay / target: %.2fx per call, %.2fx per forwarded message\n", r / t, r / 2 / t }' | tee -a "$RESULT"
echo "callgrind_mesh.sh: per-object and per-function costs in $OUT/*.diff.txt"
