#!/bin/sh
# Runs the relaynet benchmarks (see bench/run.py and docs/BENCHMARKS.md).
#   bench/run.sh            every scenario, median of 3 interleaved runs (~15 min)
#   bench/run.sh --quick    a short smoke run of every scenario
# Expects bench/setup.sh and `make build` to have run (`make bench` does both).
set -eu
cd "$(dirname "$0")/.."
exec /usr/bin/python3 bench/run.py "$@"
