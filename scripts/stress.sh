#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make stress: the chaos stress test (lru_gen_stress) on the debug kernel
# (FLAVOR=debug unless FLAVOR says otherwise), 20 minutes by default.
#
# usage: scripts/stress.sh [lru_gen_stress options]   e.g. --duration 5m --seed 7
# Defaults: --duration 20m --min-passes 10000.  The KTAP output is kept in
# results/stress-$FLAVOR.ktap; the last kernel console in the cache's logs.
FLAVOR=${FLAVOR:-debug}
export FLAVOR
. "$(dirname "$0")/lib.sh"

args=("$@")
have() { local a; for a in "${args[@]}"; do case "$a" in "$1" | "$1"=*) return 0 ;; esac; done; return 1; }
have --duration || have -d || args+=(--duration 20m)
have --min-passes || args+=(--min-passes 10000)

# The VM's timeout: the stress duration plus set-up, the checkpoints'
# overrun and the final kmemleak scans.
secs=1200
for ((i = 0; i < ${#args[@]}; i++)); do
	case "${args[i]}" in
	--duration | -d) d=${args[i + 1]:-} ;;
	--duration=*) d=${args[i]#--duration=} ;;
	*) continue ;;
	esac
	case "$d" in
	*h) secs=$((${d%h} * 3600)) ;;
	*m) secs=$((${d%m} * 60)) ;;
	*s) secs=${d%s} ;;
	*) secs=$d ;;
	esac
done
case "$secs" in '' | *[!0-9]*) die "cannot read the duration from: ${args[*]}" ;; esac

step "deps" "$TOP/scripts/deps.sh"
step "kernel ($FLAVOR)" "$TOP/scripts/kernel.sh" build
step "modules ($FLAVOR)" "$TOP/scripts/modules.sh"
step "selftests build" "$TOP/scripts/selftests.sh"

bin=$TOP/tools/testing/selftests/target/x86_64-unknown-linux-gnu/release/lru_gen_stress
mkdir -p "$TOP/results"
out=$TOP/results/stress-$FLAVOR.ktap
log "lru_gen_stress ${args[*]} on the $FLAVOR kernel (VM timeout $((secs + 900))s; output also in $out)"
rc=0
"$TOP/scripts/vm-run" -m 2G -s 2 -t $((secs + 900)) -- "$bin" "${args[@]}" | tee "$out" || rc=$?
if [ "$rc" -ne 0 ]; then
	echo "---- last 40 lines of the kernel console ($MGLRU_CACHE/logs/vm-console.log) ----" >&2
	tail -n 40 "$MGLRU_CACHE/logs/vm-console.log" >&2
fi
exit "$rc"
