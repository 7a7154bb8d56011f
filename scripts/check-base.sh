#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make check-base [BASE=7.3]: "with 0x8 clear, aging is the unpatched base
# kernel's", checked.
#
#  1. builds the base flavour (pristine 6.12.117 or 7.3.4: the tag's tree, clean,
#     with configs/mglru-secondary.config + configs/base.config, which only
#     renames it "-base") and the default one (the series);
#  2. boots base and runs every selftest there: what needs the series
#     (capability 0x8, the fast-only counters, the Rust modules and
#     bindings) is skipped with the reason, and exactly that (the list
#     below), the rest (0x8-clear accuracy, lru_gen interfaces, KVM) must
#     pass; lru_gen_exact_test writes base's page-exact promotion maps;
#  3. boots the series and runs lru_gen_exact_test --compare on base's maps:
#     with 0x8 clear (and set) the same pages must be promoted, page by page.
# Output in results/check-base/ (6.12) or results/7.3/check-base/; ends with "check-base: PASS" or FAIL.
# lib.sh sets -o pipefail: "vm-run ... | tee" fails when vm-run does.
. "$(dirname "$0")/lib.sh"

out=$(results_dir)/check-base
bin=$TOP/tools/testing/selftests/target/x86_64-unknown-linux-gnu/release

# The cases base must skip, as test:case (test: the whole program skipped
# with a "1..0 # SKIP" plan), from results/check-base/base.ktap as committed:
# everything that needs the series' interfaces.
# A case skipping on base that is not here (a set-up error turned into a
# skip, a test that no longer runs on the base) fails check-base, and so does one
# listed here that did not skip.  Change it with the tests.
EXPECTED_BASE_SKIPS="
mglru_smoke_test:rust_oot_module_load_unload
lru_gen_caps_test
lru_mirror_test
rust_doctests_test:mmu_notifier_doctests_passed
lru_gen_aging_test:lru_gen_y_sets_secondary_mmu_walk
lru_gen_aging_test:accuracy_4k_0x8_on
lru_gen_aging_test:timed_passes_accurate_0x8_on_and_off
lru_gen_aging_test:guest_writes_intact_with_aging_looping
lru_gen_aging_test:accuracy_thp_0x8_on
lru_gen_aging_test:batch_spans_memslots_holes_and_vmas
lru_gen_aging_test:nested_guest_vm_still_ages_fast
lru_gen_aging_test:nested_heavy_vm_ages_shadow_pages_fast
lru_gen_aging_test:aging_races_faults_memslots_teardown
"
# 7.x has upstream's kernel::miscdevice, so only the 6.12 series adds one.
[ "$BASE" != 6.12 ] || EXPECTED_BASE_SKIPS="$EXPECTED_BASE_SKIPS
rust_doctests_test:miscdevice_doctests_passed"

# skipped_cases KTAP: the skipped cases of a run-selftests log as test:case,
# one a line, counted the way its "kselftest totals" count skips: each
# skipped case, and a test whose whole plan was skipped as one.  Stops at
# the totals line (what follows is not run-selftests output).
skipped_cases() {
	awk '
		/^# kselftest totals/ { exit }
		/^# selftests: / { test = $NF; cases = 0; next }
		/^# (not )?ok [0-9]+ / {
			cases++
			if ($0 ~ / # SKIP/) {
				name = $0
				sub(/^# ok [0-9]+ /, "", name)
				sub(/ # SKIP.*/, "", name)
				print test ":" name
			}
			next
		}
		/^ok [0-9]+ selftests: .* # SKIP/ { if (cases == 0) print test }
	' "$1"
}

step "deps" "$TOP/scripts/deps.sh"
step "kernel (base)" env FLAVOR=base "$TOP/scripts/kernel.sh" build
step "kernel (default)" env FLAVOR=default "$TOP/scripts/kernel.sh" build
step "modules (default)" env FLAVOR=default "$TOP/scripts/modules.sh"
step "modules (base: the C test modules)" env FLAVOR=base "$TOP/scripts/modules.sh"
step "selftests build" "$TOP/scripts/selftests.sh"

rm -rf "$out"
mkdir -p "$out"
# The base tree must really be the pristine tag: its commit, and no change
# to a tracked file (kernel.sh checks it out forcibly; build products are
# untracked).
base_tree=$MAIN_KDIR-base
[ "$(git -C "$base_tree" rev-parse HEAD)" = "$(git -C "$MAIN_KDIR" rev-parse "$BASE_TAG^{commit}")" ] ||
	die "$base_tree is not at $BASE_TAG"
git -C "$base_tree" diff --quiet HEAD ||
	die "$base_tree has changes against $BASE_TAG (git -C $base_tree diff HEAD); 'make kernel FLAVOR=base' resets it"
[ -z "$(git -C "$base_tree" status --porcelain --untracked-files=no)" ] ||
	die "$base_tree is not clean (git -C $base_tree status); 'make kernel FLAVOR=base' resets it"

rc=0
fail() { echo "check-base: $*" >&2; rc=1; }
tests=$(grep -v -e '^#' -e '^$' "$TOP/tools/testing/selftests/kselftest-list.txt" |
	grep -v -e ':lru_gen_exact_test$' -e ':lru_gen_stress$')
log "base kernel: the selftests (series-only cases skip), then lru_gen_exact_test --map-out"
# lru_gen_stress needs the series throughout (it skips at once on base);
# lru_gen_exact_test runs once, writing the maps.
# One string: vm-run runs it with /bin/sh; every word quoted for it.
q() { printf '%q' "$1"; }
cmd="$(q "$TOP/scripts/run-selftests")"
for t in $tests; do cmd="$cmd $(q "$t")"; done
cmd="$cmd; r=\$?"
cmd="$cmd; $(q "$bin/lru_gen_exact_test") --map-out $(q "$out/base.json") >$(q "$out/base-exact.ktap") 2>&1 || r=1"
cmd="$cmd; cat $(q "$out/base-exact.ktap"); exit \$r"
FLAVOR=base "$TOP/scripts/vm-run" -t 2400 -- "$cmd" |
	tee "$out/base.ktap" || fail "the base run failed (see $out/base.ktap)"
grep -q '^ok 1 exact_promotion_0x8_clear$' "$out/base-exact.ktap" 2>/dev/null ||
	fail "lru_gen_exact_test failed on base"
# Base has no capability 0x8: the 0x8-set round must skip, saying so.
grep -Eq '^ok [0-9]+ exact_promotion_0x8_set # SKIP .*no lru_gen capability 0x8' "$out/base-exact.ktap" 2>/dev/null ||
	fail "exact_promotion_0x8_set did not skip on base (no capability 0x8 there)"
grep -Eq '^ok [0-9]+ answers_shifted_by_one_page_are_caught # SKIP .*no lru_gen capability 0x8' "$out/base-exact.ktap" 2>/dev/null ||
	fail "answers_shifted_by_one_page_are_caught did not skip on base (no fast-only op there)"
[ -s "$out/base.json" ] || fail "base wrote no promotion maps"
grep -q '"kernel": "[^"]*-base"' "$out/base.json" 2>/dev/null ||
	fail "the maps do not come from the base kernel"
skipped=$(skipped_cases "$out/base.ktap" | sort)
expected=$(printf '%s\n' $EXPECTED_BASE_SKIPS | sort)
if [ "$skipped" != "$expected" ]; then
	fail "base skipped other cases than the series-only ones:"
	diff <(echo "$expected") <(echo "$skipped") | sed -n 's/^>/  skipped, not series-only:/p; s/^</  series-only, not skipped:/p' >&2 || true
fi
total_skips=$(sed -n 's/^# kselftest totals: .*skip:\([0-9]*\).*/\1/p' "$out/base.ktap")
[ "$total_skips" = "$(echo "$skipped" | grep -c .)" ] ||
	fail "base's kselftest totals count ${total_skips:-no} skips, its cases $(echo "$skipped" | grep -c .)"

log "series kernel: lru_gen_exact_test --compare $out/base.json"
if [ -s "$out/base.json" ]; then
	FLAVOR=default "$TOP/scripts/vm-run" -t 900 -- \
		"$bin/lru_gen_exact_test" --map-out "$out/series.json" --compare "$out/base.json" |
		tee "$out/series.ktap" || fail "lru_gen_exact_test --compare failed on the series"
	# The series has 0x8: both rounds ran, and the comparison did.
	for c in exact_promotion_0x8_clear exact_promotion_0x8_set answers_shifted_by_one_page_are_caught \
		same_pages_promoted_as_reference_kernel; do
		grep -Eq "^ok [0-9]+ $c\$" "$out/series.ktap" ||
			fail "$c is not ok (or skipped) on the series"
	done
else
	fail "no base maps to compare the series with"
fi

echo
echo "check-base summary ($(date -u +%F)):"
grep -h 'kselftest totals' "$out/base.ktap" | sed 's/^/  base selftests: /' || true
echo "  base, skipped (series-only): $(echo "$skipped" | grep -c .) case(s)"
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
