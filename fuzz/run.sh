#!/bin/sh
# Runs the harnesses built by fuzz/build.sh (see docs/FUZZING.md).
#
#   fuzz/run.sh fuzz [harness...]    each for FUZZ_SECONDS (default 150) seconds
#   fuzz/run.sh replay [harness...]  each once over fuzz/regressions/<harness>/
#
# Working corpora live in build/fuzz/corpus/<harness>/ (seeded from
# fuzz/corpus/ and the regressions); crashing inputs go to
# build/fuzz/findings/<harness>/, logs to build/fuzz/logs/. The exit status is
# non-zero when any harness found something: copy the input into
# fuzz/regressions/<harness>/ once it is understood and fixed.
set -u
mode=${1:-fuzz}
[ $# -gt 0 ] && shift
harnesses=${*:-json_decode json_roundtrip mesh_scan ws_receive http_request}
secs=${FUZZ_SECONDS:-150}
B=build/fuzz
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0

seed_dir() {
  case $1 in
    json_*) echo fuzz/corpus/json ;;
    mesh_*) echo fuzz/corpus/mesh ;;
    ws_*) echo fuzz/corpus/ws ;;
    http_*) echo fuzz/corpus/http ;;
  esac
}

for h in $harnesses; do
  [ -x "$B/$h" ] || { echo "fuzz: $B/$h is missing: run make fuzz-build" >&2; exit 2; }
  if [ "$mode" = replay ]; then
    files=$(find "fuzz/regressions/$h" -type f 2>/dev/null | sort)
    [ -n "$files" ] || { echo "fuzz-replay: $h: no regression inputs"; continue; }
    # shellcheck disable=SC2086
    if "$B/$h" -runs=1 $files > "$B/replay-$h.log" 2>&1; then
      echo "fuzz-replay: $h: $(echo "$files" | wc -l) inputs, no finding"
    else
      echo "fuzz-replay: $h: FAILED (see $B/replay-$h.log)"; status=1
    fi
    continue
  fi
  corpus=$B/corpus/$h findings=$B/findings/$h
  mkdir -p "$corpus" "$findings" "$B/logs"
  cp -n "$(seed_dir "$h")"/* "$corpus"/ 2>/dev/null
  [ -d "fuzz/regressions/$h" ] && cp -n "fuzz/regressions/$h"/* "$corpus"/ 2>/dev/null
  log=$B/logs/$h.log
  echo "fuzz: $h for ${secs}s (log $log)"
  start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  "$B/$h" -max_total_time="$secs" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$findings/" "$corpus" > "$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  n=$(find "$corpus" -type f | wc -l)
  nf=$(find "$findings" -type f | wc -l)
  echo "fuzz: $h: started $start, ${secs}s, ${execs:-?} execs (${rate:-?}/s), corpus $n files, findings $nf, exit $rc"
  [ "$rc" = 0 ] && [ "$nf" = 0 ] || status=1
done
exit $status
