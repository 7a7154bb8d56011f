#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make check-base: "with 0x8 clear, aging is unpatched 6.12", checked.
#
#  1. builds the base flavour (pristine 6.12.117, the default config) and
#     the default one (the series);
#  2. boots base and runs every selftest there: what needs the series
#     (capability 0x8, the fast-only counters, the Rust modules and
#     bindings) is skipped with the reason, the rest (0x8-clear accuracy,
#     lru_gen interfaces, KVM) must pass; lru_gen_exact_test writes base's
#     page-exact promotion maps;
#  3. boots the series and runs lru_gen_exact_test --compare on base's maps:
#     with 0x8 clear (and set) the same pages must be promoted, page by page.
# Output in results/check-base/; ends with "check-base: PASS" or FAIL.
. "$(dirname "$0")/lib.sh"

out=$TOP/results/check-base
bin=$TOP/tools/testing/selftests/target/x86_64-unknown-linux-gnu/release
step "deps" "$TOP/scripts/deps.sh"
step "kernel (base)" env FLAVOR=base "$TOP/scripts/kernel.sh" build
step "kernel (default)" env FLAVOR=default "$TOP/scripts/kernel.sh" build
step "modules (default)" env FLAVOR=default "$TOP/scripts/modules.sh"
step "selftests build" "$TOP/scripts/selftests.sh"

rm -rf "$out"
mkdir -p "$out"
# The base tree must really be the pristine tag.
[ "$(git -C "$MAIN_KDIR-base" rev-parse HEAD)" = "$(git -C "$MAIN_KDIR" rev-parse "$BASE_TAG^{commit}")" ] ||
	die "$MAIN_KDIR-base is not at $BASE_TAG"

rc=0
tests=$(grep -v -e '^#' -e '^$' "$TOP/tools/testing/selftests/kselftest-list.txt" |
	grep -v -e ':lru_gen_exact_test$' -e ':lru_gen_stress$' | tr '\n' ' ')
log "base kernel: the selftests (series-only cases skip), then lru_gen_exact_test --map-out"
# lru_gen_stress needs the series throughout (it skips at once on base);
# lru_gen_exact_test runs once, writing the maps.
# One string: vm-run runs it with /bin/sh.
cmd="scripts/run-selftests $tests; r=\$?"
cmd="$cmd; $bin/lru_gen_exact_test --map-out $out/base.json >$out/base-exact.ktap 2>&1 || r=1"
cmd="$cmd; cat $out/base-exact.ktap; exit \$r"
FLAVOR=base "$TOP/scripts/vm-run" -t 2400 -- "$cmd" |
	tee "$out/base.ktap" || rc=1
grep -q '^ok 1 exact_promotion_0x8_clear' "$out/base-exact.ktap" 2>/dev/null ||
	{ echo "check-base: lru_gen_exact_test failed on base" >&2; rc=1; }
[ -s "$out/base.json" ] || { echo "check-base: base wrote no promotion maps" >&2; rc=1; }
grep -q '"kernel": "[^"]*-base"' "$out/base.json" 2>/dev/null ||
	{ echo "check-base: the maps do not come from the base kernel" >&2; rc=1; }

log "series kernel: lru_gen_exact_test --compare $out/base.json"
if [ -s "$out/base.json" ]; then
	FLAVOR=default "$TOP/scripts/vm-run" -t 900 -- \
		"$bin/lru_gen_exact_test" --map-out "$out/series.json" --compare "$out/base.json" |
		tee "$out/series.ktap" || rc=1
fi

echo
echo "check-base summary ($(date -u +%F)):"
grep -h 'kselftest totals' "$out/base.ktap" | sed 's/^/  base selftests: /' || true
echo "  base, skipped (series-only): $(grep -c '# SKIP' "$out/base.ktap" || true) case(s)"
grep -h '^# 0x8 ' "$out/base-exact.ktap" 2>/dev/null | sed 's/^# /  base exact: /' || true
grep -h '^# 0x8 ' "$out/series.ktap" 2>/dev/null | sed 's/^# /  series exact: /' || true
grep -h '^ok .*same_pages_promoted\|^not ok .*same_pages_promoted' "$out/series.ktap" 2>/dev/null |
	sed 's/^/  page-exact comparison: /' || true
if [ "$rc" -eq 0 ]; then
	echo "check-base: PASS"
else
	echo "check-base: FAIL (see $out)"
fi
exit "$rc"
