#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Regenerate patches/ from the kernel tree's commits on top of the pristine
# base (git format-patch with a cover letter) and rewrite patches/series.
# The cover letter keeps the subject and text of patches/0000-cover-letter.patch;
# only its shortlog and diffstat are regenerated.
. "$(dirname "$0")/lib.sh"
need_default_flavor
[ -d "$KDIR/.git" ] || die "no kernel tree at $KDIR: run 'make kernel-tree'"
cd "$KDIR"
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
	die "uncommitted changes in $KDIR: commit them first (git add -f for new files)"
n=$(git rev-list --count "$BASE_TAG"..HEAD)
# The cover letter is signed by whoever runs format-patch (the committer).
export GIT_COMMITTER_NAME="mglru-secondary developers"
export GIT_COMMITTER_EMAIL="mglru-secondary@example.org"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ "$n" -gt 0 ]; then
	git format-patch -q --cover-letter --base="$BASE_TAG" -o "$tmp" "$BASE_TAG"..HEAD
	old=$PATCH_DIR/0000-cover-letter.patch
	[ -f "$old" ] && python3 - "$old" "$tmp/0000-cover-letter.patch" <<'PY'
import re, sys
old, new = (open(p).read() for p in sys.argv[1:])
subj = re.search(r'^Subject: \[PATCH[^\]]*\] (.*)$', old, re.M).group(1)
head, _, body = old.partition('\n\n')
# The blurb ends where git's shortlog ("Author Name (N):") starts.
m = re.search(r'^\S.* \(\d+\):$', body, re.M)
blurb = body[:m.start()].rstrip('\n') if m else body.rstrip('\n')
new = new.replace('*** SUBJECT HERE ***', subj, 1)
new = new.replace('*** BLURB HERE ***', blurb, 1)
open(sys.argv[2], 'w').write(new)
PY
fi
mkdir -p "$PATCH_DIR"
find "$PATCH_DIR" -maxdepth 1 -name '*.patch' -delete
{
	echo "# Patch series for $KERNEL_PKG $KERNEL_PKG_VERSION, applied in order by scripts/kernel.sh."
	(cd "$tmp" && ls | grep -v '^0000-' || true)
} >"$PATCH_DIR/series"
[ "$n" -eq 0 ] || cp "$tmp"/*.patch "$PATCH_DIR/"
echo "$(patches_hash) $(git rev-parse HEAD)" >"$STATE"
log "exported $n patch(es) to patches/$BASE/ (cover letter + series)"
