#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# The project's test command for one base (make check [BASE=7.3]; make
# check-all runs both): builds what is needed, runs the
# host-side tests, then the selftests in the test VM, and ends with
# "N passed, N failed, N skipped".  Exit status: 0 only if nothing failed.
#
# usage: scripts/check.sh [TEST...]   run only these VM selftests (and the
#                                     host tests)
. "$(dirname "$0")/lib.sh"
[ "$FLAVOR" != base ] || die "make check tests the series; on base, run make check-base"

total_start=$(date +%s)
pass=0 fail=0 skip=0
hn=0
result() { # result NAME STATUS [DETAIL]
	hn=$((hn + 1))
	case "$2" in
	ok) echo "ok $hn host: $1"; pass=$((pass + 1)) ;;
	skip) echo "ok $hn host: $1 # SKIP $3"; skip=$((skip + 1)) ;;
	*) [ -n "${3:-}" ] && printf '%s\n' "$3" | sed 's/^/# /'
	   echo "not ok $hn host: $1"; fail=$((fail + 1)) ;;
	esac
}

step "deps" "$TOP/scripts/deps.sh"
step "kernel" "$TOP/scripts/kernel.sh" build
step "modules" "$TOP/scripts/modules.sh"
step "selftests build" "$TOP/scripts/selftests.sh"

log "host-side tests"
echo "TAP version 13"
echo "# host tests"
cd "$TOP/tools/testing/selftests"
out=$(cargo test --locked 2>&1) && rc=0 || rc=$?
p=$(printf '%s\n' "$out" | sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\1/p' | paste -sd+ | bc)
f=$(printf '%s\n' "$out" | sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\2/p' | paste -sd+ | bc)
echo "# cargo test: ${p:-0} passed, ${f:-0} failed"
if [ "$rc" -eq 0 ] && [ "${f:-0}" -eq 0 ] && [ "${p:-0}" -gt 0 ]; then
	result "cargo_test (${p} unit tests)" ok
else
	result "cargo_test" fail "$(printf '%s\n' "$out" | tail -n 40)"
fi
out=$(cargo fmt --check 2>&1) && result cargo_fmt ok || result cargo_fmt fail "$out"
out=$(cargo clippy --locked --all-targets -- -D warnings 2>&1) &&
	result cargo_clippy ok || result cargo_clippy fail "$(printf '%s\n' "$out" | tail -n 40)"
cd "$TOP"

# Patch-series hygiene: series and files agree, every patch is signed off.
out=$(
	cd "$PATCH_DIR"
	for p in *.patch; do
		[ -e "$p" ] || continue
		case "$p" in 0000-*) continue ;; esac
		grep -qxF "$p" series || echo "$p is not listed in patches/series"
		grep -q '^Signed-off-by:' "$p" || echo "$p has no Signed-off-by"
	done
	series_patches | while read -r p; do
		[ -f "$p" ] || echo "series lists $p, which does not exist"
	done
) || true
[ -z "$out" ] && result patches_series_consistent ok || result patches_series_consistent fail "$out"

# checkpatch.pl from the pinned tree: no errors in any patch (warnings are
# printed for review but do not fail); checkpatch that does not run to its
# summary fails too.
out=$(
	series_patches | while read -r p; do
		if ! r=$(checkpatch "$PATCH_DIR/$p"); then
			echo "$p: checkpatch did not run"
			printf '%s\n' "$r" | sed 's/^/    /'
			continue
		fi
		read -r e w < <(printf '%s\n' "$r" | tail -n 1)
		echo "$p: $e error(s), $w warning(s)"
		[ "$e" -eq 0 ] || printf '%s\n' "$r" | sed '$d; s/^/    /'
	done
)
printf '%s\n' "$out" | sed 's/^/# checkpatch: /'
if [ -z "$out" ] || printf '%s\n' "$out" | grep -q -e '[1-9][0-9]* error(s)' -e 'did not run'; then
	result checkpatch_no_errors fail "${out:-no patch checked}"
else
	result checkpatch_no_errors ok
fi

# The README's set-up on a fresh Debian 12 (debootstrap root, chroot): skips
# itself, with the reason, when the set-up files are unchanged since its last
# pass on this machine; a new machine (CI) always runs it.
out=$("$TOP/scripts/fresh-check") && rc=0 || rc=$?
case $rc in
0) result "fresh_system_setup" ok ;;
4) result "fresh_system_setup" skip "$out" ;;
*) result "fresh_system_setup" fail "$out" ;;
esac

# The out-of-tree Rust modules: rustfmt with the kernel's config, and a
# CLIPPY=1 build (same toolchain as the kernel). The kernel crate's own
# clippy run is in `make lint` (it rebuilds the crate).
# They build in $(flavor_module_src): the clone for 6.12, a copy for 7.3.
msrc=$(flavor_module_src)
out=$(/usr/bin/rustfmt --check --edition 2021 --config-path "$KDIR/.rustfmt.toml" \
	"$TOP"/rust/*.rs 2>&1) && result rustfmt_modules ok || result rustfmt_modules fail "$out"
touch "$msrc"/rust/*.rs
out=$(kmake CLIPPY=1 M="$msrc" modules 2>&1) && ! printf '%s\n' "$out" | grep -qE '^(warning|error)' &&
	result clippy_modules ok || result clippy_modules fail "$(printf '%s\n' "$out" | grep -E -A8 '^(warning|error)' | head -n 60)"

# Compile-fail checks of the Rust abstractions (rust/compile_fail/): what
# safe code must not be able to express does not compile.
out=$("$TOP/scripts/compile-fail-check" 2>&1) && result "rust_compile_fail ($(printf '%s\n' "$out" | grep -c '^ok') cases)" ok ||
	result rust_compile_fail fail "$out"
printf '%s\n' "$out" | sed 's/^/# compile-fail: /'

log "selftests in the test VM"
vmout=$(mktemp)
set +e
"$TOP/scripts/vm-run" -- "$TOP/scripts/run-selftests" "$@" | tee "$vmout"
vmrc=${PIPESTATUS[0]}
set -e
totals=$(grep -a '^# kselftest totals:' "$vmout" | tail -n 1)
rm -f "$vmout"
if [ -z "$totals" ]; then
	echo "# the test VM produced no results (vm-run exit $vmrc)"
	fail=$((fail + 1))
else
	vp=$(echo "$totals" | sed -n 's/.*pass:\([0-9]*\).*/\1/p')
	vf=$(echo "$totals" | sed -n 's/.*fail:\([0-9]*\).*/\1/p')
	vs=$(echo "$totals" | sed -n 's/.*skip:\([0-9]*\).*/\1/p')
	pass=$((pass + vp)) fail=$((fail + vf)) skip=$((skip + vs))
	if [ "$vmrc" -ne 0 ] && [ "$vf" -eq 0 ]; then
		echo "# vm-run exited $vmrc although no test failed"
		fail=$((fail + 1))
	fi
fi

log "check finished in $(($(date +%s) - total_start))s"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
