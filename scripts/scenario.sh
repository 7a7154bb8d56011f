#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make scenario: the users' setup.  In the test VM, Debian's QEMU with KVM
# (nested) boots the series' kernel as a guest running memcached; a load
# generator with a hot and a cold set talks to it while the host reclaims
# the QEMU memcg (memory.max below its footprint, then a proactive
# memory.reclaim loop).  Three columns, alternating boots of the test VM:
# the series' kernel with 0x8 set and with 0x8 clear (one fresh guest each,
# order rotating) and the pristine base kernel (FLAVOR=base), each round
# once.  The guest kernel is the same in every column (the series' default
# bzImage): only the host differs.  A benchmark, not a test: it prints the
# table with 95 % intervals and never fails on a number.
#
# usage: scripts/scenario.sh [guest_scenario run options]  (e.g. --phase 20)
# Environment:
#   SCENARIO_ROUNDS  rounds (default 3): n per column
#   SCENARIO_BUILD=0 skip the build steps (right after they ran)
#   SCENARIO_OUT     results directory (default results/, results/7.3/);
#                    its scenario-runs/ is replaced
#   SCENARIO_TIMEOUT per boot of the test VM, seconds (default 3600)
# Results: OUT/scenario.json (every run and the table), scenario.md,
# scenario.dat, scenario.png; the run files in OUT/scenario-runs/.
. "$(dirname "$0")/lib.sh"
need_default_flavor
start=$(date +%s)
rounds=${SCENARIO_ROUNDS:-3}
case "$rounds" in '' | *[!0-9]* | 0) die "SCENARIO_ROUNDS=$rounds: want a positive number" ;; esac
if [ "${SCENARIO_BUILD:-1}" != 0 ]; then
	step "deps" "$TOP/scripts/deps.sh"
	step "kernel (series)" "$TOP/scripts/kernel.sh" build
	step "kernel (base)" env FLAVOR=base "$TOP/scripts/kernel.sh" build
	step "selftests build and the guest image" "$TOP/scripts/selftests.sh"
fi
bin=$TOP/tools/testing/selftests/target/x86_64-unknown-linux-gnu/release/guest_scenario
[ -x "$bin" ] || die "no $bin: run scripts/selftests.sh (or drop SCENARIO_BUILD=0)"
guest_kernel=$MAIN_KDIR/arch/x86/boot/bzImage
[ -f "$guest_kernel" ] || die "no $guest_kernel: run make kernel"
out=${SCENARIO_OUT:-$(results_dir)}
runs=$out/scenario-runs
rm -rf "$runs"
mkdir -p "$runs"
# The test VM: 3 GiB (the guest's 256 MiB, QEMU, the RAM disk's pages) and
# a 512 MiB RAM disk to swap to; 2 CPUs: QEMU on one, the load generator and
# the reclaim on the other.
vm=("$TOP/scripts/vm-run" -m 3G -s 2 -t "${SCENARIO_TIMEOUT:-3600}" -a "brd.rd_size=524288")
for r in $(seq 1 "$rounds"); do
	if [ $((r % 2)) -eq 1 ]; then modes=on,off; boots="default base"; else modes=off,on; boots="base default"; fi
	for f in $boots; do
		if [ "$f" = default ]; then m=$modes; else m=base; fi
		step "round $r/$rounds: $(if [ "$f" = base ]; then echo "base kernel"; else echo "series' kernel, 0x8 $m"; fi)" \
			env FLAVOR="$f" "${vm[@]}" -- "$bin" run --modes "$m" --round "$r" -o "$runs" --kernel "$guest_kernel" "$@"
	done
done
step "report" "$bin" report -o "$out" "$runs"/run-*.json
step "plot" "$TOP/scripts/scenario-plot" "$out"
log "make scenario finished in $(($(date +%s) - start))s: $out/scenario.md, $out/scenario.png"
