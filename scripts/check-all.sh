#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make check-all: make check on every base the project maintains (6.12, the
# default, then 7.3), one after the other; ends with the summed
# "N passed, N failed, N skipped".  Exit status: 0 only if nothing failed
# on either base.  Arguments are passed to each check.sh (TEST names).
. "$(dirname "$0")/lib.sh"
start=$(date +%s)
pass=0 fail=0 skip=0 lines=()
for b in 6.12 7.3; do
	log "make check BASE=$b"
	out=$(mktemp)
	set +e
	BASE=$b "$TOP/scripts/check.sh" "$@" 2>&1 | tee "$out"
	rc=${PIPESTATUS[0]}
	set -e
	sum=$(grep -a -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$out" | tail -n 1)
	rm -f "$out"
	if [ -z "$sum" ]; then
		sum="0 passed, 1 failed, 0 skipped"
		echo "# check BASE=$b ended without a summary (exit $rc)"
	elif [ "$rc" -ne 0 ] && [ "$(echo "$sum" | cut -d' ' -f3)" = 0 ]; then
		sum="${sum%%,*}, 1 failed, ${sum##*, }"
		echo "# check BASE=$b exited $rc although no test failed"
	fi
	lines+=("BASE=$b: $sum")
	read -r p _ f _ s _ <<<"${sum//,/}"
	pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
done
printf '# %s\n' "${lines[@]}"
log "check-all finished in $(($(date +%s) - start))s"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
