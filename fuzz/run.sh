#!/usr/bin/env bash
# Runs the fuzz targets (cargo-fuzz, libFuzzer) from the seeds in
# fuzz/seeds/<target>, growing a corpus in fuzz/corpus/<target> (not
# committed). Installs cargo-fuzz, pinned, into ~/.cache/divert-tools when
# missing. It builds on the stable toolchain without a sanitizer (`-s
# none`): the crates under test forbid `unsafe`, so AddressSanitizer would
# watch only their C dependencies, and stable needs nothing from outside
# crates.io.
#
# Usage: bash fuzz/run.sh smoke [TARGET...]   CI's short budget per target
#        bash fuzz/run.sh long  [TARGET...]   10 million runs or one hour each
# Knobs: SMOKE_SECONDS=20, LONG_RUNS=10000000, LONG_SECONDS=3600
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the run;
# each one found becomes a regression test beside the code it broke.
set -euo pipefail
cd "$(dirname "$0")"

mode=${1:-smoke}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(baggage detect registry iptables_save discovery_update http1_request h1_head h2_upstream key_cookie)

CARGO_FUZZ_VERSION=0.13.2
tools="${XDG_CACHE_HOME:-$HOME/.cache}/divert-tools/cargo-fuzz-$CARGO_FUZZ_VERSION"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"

case $mode in
smoke) budget=(-max_total_time="${SMOKE_SECONDS:-20}") ;;
long) budget=(-runs="${LONG_RUNS:-10000000}" -max_total_time="${LONG_SECONDS:-3600}") ;;
*) echo "usage: bash fuzz/run.sh smoke|long [TARGET...]" >&2; exit 2 ;;
esac

cargo fuzz build -O -s none
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  start=$(date +%s)
  log=$(mktemp)
  if ! cargo fuzz run -O -s none "$t" "corpus/$t" "seeds/$t" -- "${budget[@]}" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    rm -f "$log"
    echo "fuzz: $t failed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  echo "fuzz: $t clean: ${runs:-?} runs in $(($(date +%s) - start)) s (${rate:-?}/s)"
  rm -f "$log"
done
