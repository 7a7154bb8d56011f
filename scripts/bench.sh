#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make bench: build what is needed, run lru_gen_bench in the test VM (4 vCPUs,
# enough memory for 1 GiB x 2 vCPUs of guest memory plus the floor process),
# then plot its results on the host.  A benchmark, not a test: it prints
# ratios with confidence intervals and never fails on a number.
#
# usage: scripts/bench.sh [lru_gen_bench options]   (e.g. -m 64M -v 1,2 -n 5)
# Results: results/bench.json, results/bench-*.dat and results/bench-*.png.
. "$(dirname "$0")/lib.sh"
# The committed results are the default kernel's: a sanitizer or base
# kernel's numbers must not overwrite them.
need_default_flavor
start=$(date +%s)
step "deps" "$TOP/scripts/deps.sh"
step "kernel" "$TOP/scripts/kernel.sh" build
step "selftests build" "$TOP/scripts/selftests.sh"
bin=$TOP/tools/testing/selftests/target/x86_64-unknown-linux-gnu/release/lru_gen_bench
out=$TOP/results
mkdir -p "$out"
rc=0
# The guest needs the largest point's guest memory twice over (the VMM's
# backing and the floor process run one after the other, but page cache and
# the kernel need room too): 6 GiB covers the default grid.
step "lru_gen_bench in the test VM (progress lines show each point)" \
	"$TOP/scripts/vm-run" -m "${BENCH_VM_MEM:-6G}" -s "${BENCH_VM_SMP:-4}" \
	-t "${BENCH_TIMEOUT:-7200}" -- "$bin" -o "$out" "$@" || rc=$?
if [ "$rc" -eq 0 ]; then
	step "plots" "$TOP/scripts/bench-plot" "$out"
fi
log "make bench finished in $(($(date +%s) - start))s (exit $rc)"
exit "$rc"
