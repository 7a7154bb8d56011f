#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make bench: build what is needed, run lru_gen_bench in the test VM booted
# on the series' kernel, then again booted on the pristine base kernel
# (FLAVOR=base: the same VM size, the same points), merge the two runs into
# one table per point and plot it on the host.  A benchmark, not a test: it
# prints ratios with confidence intervals and never fails on a number.
#
# usage: scripts/bench.sh [lru_gen_bench options]   (e.g. -m 64M -v 1,2 -n 5)
# Environment:
#   BENCH_SKIP_BASE=1  no base-kernel boot: the series' columns only
#   BENCH_BUILD=0      skip the build steps (deps, kernels, selftests), for
#                      a re-run right after they were built
#   BENCH_VM_MEM       test VM memory (default 10G, see below)
#   BENCH_VM_SMP       test VM vCPUs (default 4)
#   BENCH_TIMEOUT      per boot, seconds (default 7200)
#   BENCH_OUT          results directory (default results/, results/7.3/
#                      with BASE=7.3), e.g. for a
#                      subset that must not replace the grid's results
# Results: results/bench.json (merged, every sample), results/bench.md (the
# tables), results/bench-*.dat and results/bench-*.png; each kernel's own
# run in results/bench-series/ and results/bench-base/.
. "$(dirname "$0")/lib.sh"
# The committed results are the default kernel's: a sanitizer kernel's
# numbers must not overwrite them (the base kernel is booted below).
need_default_flavor
start=$(date +%s)
skip_base=${BENCH_SKIP_BASE:-0}
if [ "${BENCH_BUILD:-1}" != 0 ]; then
	step "deps" "$TOP/scripts/deps.sh"
	step "kernel (series)" "$TOP/scripts/kernel.sh" build
	if [ "$skip_base" != 1 ]; then
		step "kernel (base)" env FLAVOR=base "$TOP/scripts/kernel.sh" build
	fi
	# lru_gen_probe (testmod/) times the PTE lock's hold on both kernels.
	step "modules (series)" "$TOP/scripts/modules.sh"
	if [ "$skip_base" != 1 ]; then
		step "modules (base: the C test modules)" env FLAVOR=base "$TOP/scripts/modules.sh"
	fi
	step "selftests build" "$TOP/scripts/selftests.sh"
fi
bin=$TOP/tools/testing/selftests/target/x86_64-unknown-linux-gnu/release/lru_gen_bench
[ -x "$bin" ] || die "no $bin: run scripts/selftests.sh (or drop BENCH_BUILD=0)"
out=${BENCH_OUT:-$(results_dir)}
mkdir -p "$out"
# Memory: the VM and the floor process (a plain process of the same size)
# are alive at once, so the test VM needs the largest point's guest memory
# twice, plus the kernel, the bench's own buffers and nested KVM's
# structures: 10 GiB covers the default grid up to 4 GiB of guest memory
# (2 GiB x 2, 1 GiB x 4); the QEMU process only takes what the guest
# touches.
vm=("$TOP/scripts/vm-run" -m "${BENCH_VM_MEM:-10G}" -s "${BENCH_VM_SMP:-4}" -t "${BENCH_TIMEOUT:-7200}")
if [ "$skip_base" = 1 ]; then
	step "lru_gen_bench on the series' kernel (progress lines show each point)" \
		env FLAVOR=default "${vm[@]}" -- "$bin" -o "$out" "$@"
else
	rm -rf "$out/bench-series" "$out/bench-base"
	step "lru_gen_bench on the series' kernel (progress lines show each point)" \
		env FLAVOR=default "${vm[@]}" -- "$bin" -o "$out/bench-series" "$@"
	step "lru_gen_bench on the base kernel (columns base and floor)" \
		env FLAVOR=base "${vm[@]}" -- "$bin" -o "$out/bench-base" "$@"
	grep -q '"mode": "base"' "$out/bench-base/bench.json" ||
		die "the base boot did not run in base mode (see $out/bench-base/bench.json)"
	step "merging the two runs into $out/bench.json" \
		"$bin" merge "$out/bench-series/bench.json" "$out/bench-base/bench.json" -o "$out"
fi
step "plots" "$TOP/scripts/bench-plot" "$out"
log "make bench finished in $(($(date +%s) - start))s"
