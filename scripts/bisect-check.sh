#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make bisect-check: every patch of the series must build on its own.
# Applies patches/ one by one on the pristine base (detached HEAD in the
# cached kernel tree), builds bzImage and modules after each one, runs
# checkpatch.pl on it, and puts the tree back on the full series.  Builds
# are incremental (and ccache'd), so a step costs what its patch touches:
# a patch to a widely included header rebuilds most of the kernel.
. "$(dirname "$0")/lib.sh"
need_default_flavor

"$TOP/scripts/kernel.sh" config
cd "$KDIR"
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
	die "uncommitted changes in $KDIR"
branch=$(git symbolic-ref --short HEAD 2>/dev/null) || die "$KDIR is not on a branch"
mapfile -t patches < <(series_patches)
[ "${#patches[@]}" -gt 0 ] || die "patches/series is empty"

restore() {
	git am --abort >/dev/null 2>&1 || true
	git checkout -q -f "$branch"
}
trap restore EXIT
git checkout -q --detach "$BASE_TAG"

results=()
failed=0
start=$(date +%s)
for i in "${!patches[@]}"; do
	p=${patches[$i]}
	n=$((i + 1))
	git am -q "$PATCH_DIR/$p" || die "patch $n ($p) does not apply"
	if cp=$(checkpatch "$PATCH_DIR/$p"); then
		errs=$(printf '%s\n' "$cp" | tail -n 1 | cut -d' ' -f1)
	else
		printf '%s\n' "$cp" >&2
		errs="(checkpatch did not run)"
	fi
	if step "[$n/${#patches[@]}] building with $p" \
		run_logged "$MGLRU_CACHE/logs/bisect-$n.log" kmake bzImage modules; then
		status=ok
	else
		status=FAILED
		failed=$((failed + 1))
	fi
	[ "$errs" = 0 ] || { status="$status, checkpatch: $errs error(s)"; failed=$((failed + 1)); }
	results+=("$n $p: $status")
done
restore
trap - EXIT
echo "bisect-check ($(($(date +%s) - start))s):"
printf '  %s\n' "${results[@]}"
[ "$failed" -eq 0 ] || die "$failed step(s) failed"
log "every patch builds on its own; run 'make kernel' to rebuild the full series"
