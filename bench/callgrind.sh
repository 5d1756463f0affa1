#!/bin/bash
# Instructions per echoed message, relaynet (examples/echo.lua) against the
# libwebsockets C floor (bench/build/lws_echo), under valgrind's callgrind.
#
#   bench/callgrind.sh [--quick] [--symbols] [--tls] [--conns "1 100"] [--size 16]
#                      [--counts "20000 100000"] [--out bench/results/callgrind]
#
# For each server and connection count the server runs under callgrind
# twice, echoing exactly N1 and then N2 messages (loadgen --count), and
#   instructions/message = (Ir(N2) - Ir(N1)) / (N2 - N1)
# so start-up, connection set-up and shutdown cancel out. bench/cg_diff.py
# splits that per object and per function. Ir counts user-space
# instructions only (the kernel's work in syscalls is not in it), so the
# script also counts syscalls per message the same way with strace -c.
#
# --symbols also profiles relaynet on bench/build/lua5.4-sym (Debian's
# lua5.4 rebuilt with symbols by bench/lua-symbols.sh; /usr/bin/lua5.4 is
# stripped) so that the interpreter's functions have names. The headline
# numbers always come from /usr/bin/lua5.4.
#
# --tls runs both servers over wss with the bench certificate
# (bench/build/tls, made by bench/setup.sh; relaynet through rn.tls_config)
# and loadgen verifying it; connection set-up (the TLS handshakes) cancels
# out like the rest.
#
# Everything goes to bench/results/callgrind/ (summary.txt, *.diff.txt).
# Run `make build` and bench/setup.sh first (`make bench` does).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=bench/results/callgrind
CONNS="1 100"
SIZE=16
COUNTS="20000 100000"
SYMBOLS=0
TLS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) CONNS="10"; COUNTS="2000 6000"; shift ;;
    --symbols) SYMBOLS=1; shift ;;
    --tls) TLS=1; shift ;;
    --conns) CONNS="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --counts) COUNTS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "usage: bench/callgrind.sh [--quick] [--symbols] [--tls] [--conns \"1 100\"] [--size BYTES] [--counts \"N1 N2\"] [--out DIR]" >&2
       exit 2 ;;
  esac
done
read -r N1 N2 <<<"$COUNTS"
[ "$N2" -gt "$N1" ] || { echo "callgrind.sh: N2 must be larger than N1" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is missing (bench/setup.sh)" >&2; exit 1; }
if [ ! -x bench/build/loadgen ] || [ ! -x bench/build/lws_echo ]; then
  echo "callgrind.sh: run bench/setup.sh first" >&2; exit 1
fi
[ -f build/relaynet/core.so ] || { echo "callgrind.sh: run make build first" >&2; exit 1; }
if [ $SYMBOLS = 1 ]; then bench/lua-symbols.sh; fi
rm -rf "$OUT"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Lift the per-address connection cap, WebSocket rate limits and the
# server-wide buffer budget (README, "Security model"): the profile runs many
# connections from loopback and broadcasts to all of them.
export RELAYNET_LIMITS="max_connections=100000,max_connections_per_ip=0,ws_msg_rate=0,ws_byte_rate=0,max_buffered=0"
export LUA_PATH_5_4="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;/usr/share/lua/5.4/?.lua;/usr/share/lua/5.4/?/init.lua;;"
export LUA_CPATH_5_4="$ROOT/build/?.so;/usr/lib/x86_64-linux-gnu/lua/5.4/?.so;;"
PORT=$((11000 + $$ % 5000))

TLSDIR="$ROOT/bench/build/tls"
SCHEME=ws
LG_TLS=()
if [ $TLS = 1 ]; then
  [ -f "$TLSDIR/server.pem" ] || { echo "callgrind.sh: no $TLSDIR/server.pem: run bench/setup.sh" >&2; exit 1; }
  SCHEME=wss
  LG_TLS=(--ca "$TLSDIR/ca.pem")
fi

# The server's command line (word-split by the caller: no spaces in it).
server_cmd() { # name port
  local lua_tls="" lws_tls=""
  if [ $TLS = 1 ]; then
    lua_tls="-e rn_bench_tls=require('relaynet').tls_config;rn_bench_tls.cert,rn_bench_tls.key='$TLSDIR/server.pem','$TLSDIR/server.key'"
    lws_tls="--tls-cert $TLSDIR/server.pem --tls-key $TLSDIR/server.key"
  fi
  case "$1" in
    relaynet) echo "lua5.4 $lua_tls examples/echo.lua $2" ;;
    relaynet-sym) echo "bench/build/lua5.4-sym $lua_tls examples/echo.lua $2" ;;
    lws) echo "bench/build/lws_echo --port $2 $lws_tls" ;;
  esac
}

wait_port() { # port pid
  local _
  for _ in $(seq 1 300); do
    kill -0 "$2" 2>/dev/null || return 1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# run_once TOOL NAME CONNS COUNT PORT -> prints Ir (callgrind) or syscalls (strace)
run_once() {
  local tool=$1 name=$2 conns=$3 count=$4 port=$5 pid file spid=""
  file="$OUT/$tool.$name.c$conns.n$count"
  if [ "$tool" = callgrind ]; then
    # shellcheck disable=SC2046
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$file.out" \
      $(server_cmd "$name" "$port") >"$file.log" 2>&1 &
    pid=$!
    wait_port "$port" "$pid" || { echo "callgrind.sh: $name did not start (see $file.log)" >&2; exit 1; }
  else
    # shellcheck disable=SC2046
    taskset -c 0 $(server_cmd "$name" "$port") >"$file.log" 2>&1 &
    pid=$!
    wait_port "$port" "$pid" || { echo "callgrind.sh: $name did not start (see $file.log)" >&2; exit 1; }
    strace -c -f -o "$file.strace" -p "$pid" 2>/dev/null &
    spid=$!
    sleep 0.5
  fi
  taskset -c 1 bench/build/loadgen --url "$SCHEME://127.0.0.1:$port/" "${LG_TLS[@]}" --mode echo --conns "$conns" \
    --inflight 1 --size "$SIZE" --count "$count" --server-pid "$pid" >"$file.json"
  sleep 0.2
  if [ -n "$spid" ]; then
    kill -INT "$spid"; wait "$spid" 2>/dev/null || true
  fi
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ "$tool" = callgrind ]; then
    awk '/^totals:/ {print $2}' "$file.out"
  else
    awk '$NF == "total" {print $4}' "$file.strace" # % time, seconds, usecs/call, calls
  fi
}

have_strace=0
command -v strace >/dev/null && have_strace=1
RESULT="$OUT/summary.txt"
{
  echo "instructions (callgrind Ir) per echoed $SIZE-byte message over $SCHEME, (Ir(N2) - Ir(N1)) / (N2 - N1), N1=$N1 N2=$N2"
  [ $have_strace = 1 ] && echo "syscalls per echoed message (strace -c), same differential"
} | tee "$RESULT"
declare -A IR
NAMES="relaynet lws"
[ $SYMBOLS = 1 ] && NAMES="relaynet relaynet-sym lws"
for conns in $CONNS; do
  for name in $NAMES; do
    PORT=$((PORT + 1)); a=$(run_once callgrind "$name" "$conns" "$N1" "$PORT")
    PORT=$((PORT + 1)); b=$(run_once callgrind "$name" "$conns" "$N2" "$PORT")
    IR[$name.$conns]=$(( (b - a) / (N2 - N1) ))
    line=$(printf "%-12s %3s conns: %7s Ir/msg" "$name" "$conns" "${IR[$name.$conns]}")
    if [ $have_strace = 1 ] && [ "$name" != relaynet-sym ]; then
      PORT=$((PORT + 1)); a=$(run_once strace "$name" "$conns" "$N1" "$PORT")
      PORT=$((PORT + 1)); b=$(run_once strace "$name" "$conns" "$N2" "$PORT")
      line="$line, $(awk -v a="$a" -v b="$b" -v n1="$N1" -v n2="$N2" 'BEGIN {printf "%.2f", (b - a) / (n2 - n1)}') syscalls/msg"
    fi
    echo "$line" | tee -a "$RESULT"
    /usr/bin/python3 bench/cg_diff.py "$N1" "$OUT/callgrind.$name.c$conns.n$N1.out" \
      "$N2" "$OUT/callgrind.$name.c$conns.n$N2.out" --top 30 >"$OUT/$name.c$conns.diff.txt"
  done
  awk -v r="${IR[relaynet.$conns]}" -v l="${IR[lws.$conns]}" -v c="$conns" \
    'BEGIN {printf "relaynet / lws C floor, %s conns: %.2fx instructions per message\n", c, r / l}' | tee -a "$RESULT"
done
echo "callgrind.sh: per-object and per-function costs in $OUT/*.diff.txt"
