#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Prepare, patch, configure and build the project's kernel of flavour
# $FLAVOR (default, debug or base; see lib.sh).
#
#   kernel.sh tree     extract the pinned source into $MAIN_KDIR (a git tree
#                      whose base commit is the pristine source), apply
#                      patches/; for debug and base, check out their worktree
#   kernel.sh config   tree + tinyconfig + the flavour's configs/*.config,
#                      verified
#   kernel.sh build    config + build bzImage and modules (default)
. "$(dirname "$0")/lib.sh"

mapfile -t FRAGMENTS < <(flavor_fragments)
extract_tree() {
	local tmp=$KDIR.extract
	rm -rf "$tmp"
	mkdir -p "$tmp"
	if [ -n "$KERNEL_APT_SOURCE" ]; then
		[ -f "$KERNEL_DEB" ] || die "$KERNEL_DEB missing; run 'make deps BASE=$BASE'"
		# The package holds /usr/src/$KERNEL_PKG.tar.xz: stream it out.
		dpkg-deb --fsys-tarfile "$KERNEL_DEB" |
			tar -xO "./usr/src/$KERNEL_PKG.tar.xz" | tar -C "$tmp" -xJ
	else
		local tarball=/usr/src/$KERNEL_PKG.tar.xz
		local have
		have=$(dpkg-query -W -f='${Version}' "$KERNEL_PKG" 2>/dev/null || true)
		[ "$have" = "$KERNEL_PKG_VERSION" ] ||
			die "$KERNEL_PKG $KERNEL_PKG_VERSION is required (installed: '${have:-none}'); run 'make deps'"
		[ -f "$tarball" ] || die "$tarball missing; reinstall $KERNEL_PKG"
		tar -C "$tmp" -xf "$tarball"
	fi
	local ver
	ver=$(make -s -C "$tmp/$KERNEL_PKG" kernelversion)
	[ "$ver" = "$KERNEL_VERSION" ] || die "tarball is $ver, expected $KERNEL_VERSION"
	(
		cd "$tmp/$KERNEL_PKG"
		git init -q -b pristine
		git config user.name "mglru-secondary pipeline"
		git config user.email "mglru-secondary@localhost"
		git config core.abbrev 12
		# Debian's top-level .gitignore ignores everything at the top
		# level ("/*"), so force-add the pristine tarball's content.
		git add -A -f .
		git commit -q -m "Linux $KERNEL_VERSION ($KERNEL_PKG $KERNEL_PKG_VERSION)"
		git tag "$BASE_TAG"
		git checkout -q -b mglru
	)
	mv "$tmp/$KERNEL_PKG" "$KDIR"
	rmdir "$tmp"
}

apply_patches() {
	cd "$KDIR"
	git reset -q --hard "$BASE_TAG"
	local p n=0
	while read -r p; do
		[ -f "$PATCH_DIR/$p" ] || die "patches/series lists $p, which does not exist"
		if ! git am -q "$PATCH_DIR/$p"; then
			git am --abort || true
			git reset -q --hard "$BASE_TAG"
			die "patch $p does not apply to $KERNEL_PKG $KERNEL_PKG_VERSION"
		fi
		n=$((n + 1))
	done < <(series_patches)
	echo "$(patches_hash) $(git rev-parse HEAD)" >"$STATE"
	log "applied $n patch(es) from patches/series on $BASE_TAG"
}

# The debug and base trees: worktrees of the main tree at its HEAD (the
# series, with any local commits of the make kernel-tree workflow) or at the
# pristine tag.  Moving one only rewrites the files that differ, so the next
# build is incremental.  They are the pipeline's, not for editing: a change
# to a tracked file (check-base requires base to be the tag exactly) is
# discarded, forcibly, on the next build; untracked build products stay.
flavor_tree() {
	FLAVOR=default KDIR=$MAIN_KDIR "$TOP/scripts/kernel.sh" tree
	local want
	case "$FLAVOR" in
	debug) want=$(git -C "$MAIN_KDIR" rev-parse HEAD) ;;
	base) want=$(git -C "$MAIN_KDIR" rev-parse "$BASE_TAG^{commit}") ;;
	esac
	if [ -e "$KDIR" ] && ! git -C "$KDIR" rev-parse -q --verify HEAD >/dev/null 2>&1; then
		# Left over from an older or re-extracted kernel tree: start over.
		log "$KDIR is not a worktree of $MAIN_KDIR any more; recreating it"
		rm -rf "$KDIR"
	fi
	if [ ! -e "$KDIR/.git" ]; then
		git -C "$MAIN_KDIR" worktree prune
		step "checking out the $FLAVOR tree into $KDIR" \
			git -C "$MAIN_KDIR" worktree add -q -f --detach "$KDIR" "$want"
	elif [ "$(git -C "$KDIR" rev-parse HEAD)" != "$want" ]; then
		# -f: local changes would otherwise be carried along (or stop it).
		step "moving the $FLAVOR tree to $(git -C "$MAIN_KDIR" log -1 --format='%h %s' "$want")" \
			git -C "$KDIR" checkout -q -f --detach "$want"
	else
		log "$FLAVOR tree up to date ($(git -C "$KDIR" log -1 --format='%h %s'))"
	fi
	if ! git -C "$KDIR" diff --quiet HEAD || [ -n "$(git -C "$KDIR" status --porcelain --untracked-files=no)" ]; then
		log "WARNING: discarding changes to tracked files in $KDIR:"
		git -C "$KDIR" status --short --untracked-files=no >&2
		step "resetting the $FLAVOR tree to $(git -C "$KDIR" log -1 --format='%h %s')" \
			git -C "$KDIR" reset -q --hard HEAD
	fi
	if [ "$FLAVOR" = debug ] && [ -n "$(git -C "$MAIN_KDIR" status --porcelain --untracked-files=no)" ]; then
		log "WARNING: uncommitted changes in $MAIN_KDIR are not in the debug tree (it follows HEAD)"
	fi
}

cmd_tree() {
	if [ "$FLAVOR" != default ]; then
		flavor_tree
		return
	fi
	if [ ! -d "$KDIR/.git" ]; then
		step "extracting $KERNEL_PKG $KERNEL_PKG_VERSION into $KDIR" extract_tree
	fi
	cd "$KDIR"
	local want have_hash have_head head
	want=$(patches_hash)
	head=$(git rev-parse HEAD)
	if [ -f "$STATE" ]; then
		read -r have_hash have_head <"$STATE"
	else
		have_hash=none have_head=none
	fi
	if [ "$head" != "$have_head" ] && [ "$have_head" != none ]; then
		# The developer committed in the tree (make kernel-tree workflow).
		if [ "$want" != "$have_hash" ] && [ -z "${FORCE:-}" ]; then
			die "$KDIR has commits that are not in patches/ and patches/ changed too.
Run 'make export-patches' to keep the tree's commits, or FORCE=1 to discard them."
		fi
		if [ "$want" = "$have_hash" ]; then
			log "kernel tree has local commits beyond patches/ (HEAD $(git log -1 --format='%h %s')); building it as is"
			return 0
		fi
	fi
	if [ "$want" = "$have_hash" ] && [ "$head" = "$have_head" ]; then
		log "kernel tree up to date with patches/ ($(git rev-list --count "$BASE_TAG"..HEAD) patch(es))"
		return 0
	fi
	step "applying patches/ with git am" apply_patches
}

# Every line of the flavour's fragments (a later fragment overrides an
# earlier one) must be what ended up in .config.
verify_config() {
	local line opt bad=0
	local -A want=()
	while read -r line; do
		case "$line" in
		CONFIG_*=*) want[${line%%=*}]=$line ;;
		"# CONFIG_"*" is not set")
			opt=${line#\# }
			want[${opt%% *}]=$line
			;;
		esac
	done < <(cat "${FRAGMENTS[@]}")
	for opt in "${!want[@]}"; do
		line=${want[$opt]}
		case "$line" in
		CONFIG_*=*)
			grep -qxF "$line" "$KDIR/.config" || {
				echo "  $opt: wanted '${line#*=}', got '$(grep "^$opt=" "$KDIR/.config" | cut -d= -f2- || true)'" >&2
				bad=1
			}
			;;
		*)
			if grep -q "^$opt=" "$KDIR/.config"; then
				echo "  $opt: wanted unset, got $(grep "^$opt=" "$KDIR/.config")" >&2
				bad=1
			fi
			;;
		esac
	done
	[ "$bad" -eq 0 ] || die "kernel config does not match ${FRAGMENTS[*]##*/} (see above)"
}

config_stamp() { echo "$(git -C "$KDIR" rev-parse --absolute-git-dir)/mglru-config"; }

# What the config was generated from: the fragments and the tree's commit.
# A tree that moved (the debug tree follows the main tree's HEAD; new
# patches, local commits) may add or change Kconfig symbols, which only a
# full tinyconfig + fragments run sets as a fresh machine would; olddefconfig
# alone would give them their defaults.
config_want() { echo "$(hash_files "${FRAGMENTS[@]}") $(git -C "$KDIR" rev-parse HEAD)"; }

gen_config() {
	kmake -s rustavailable >/dev/null 2>&1 || {
		kmake rustavailable || true
		die "Rust toolchain not usable for the kernel (see above); run 'make deps'"
	}
	configure_fragment "$KDIR" "${FRAGMENTS[@]}"
	kmake -s olddefconfig >/dev/null
	verify_config
	config_want >"$(config_stamp)"
}

cmd_config() {
	cmd_tree
	if [ -f "$KDIR/.config" ] && [ "$(cat "$(config_stamp)" 2>/dev/null)" = "$(config_want)" ]; then
		kmake -s olddefconfig >/dev/null
		verify_config
		log "kernel config ($FLAVOR) up to date"
	else
		step "configuring $FLAVOR (tinyconfig + ${FRAGMENTS[*]##*/})" gen_config
	fi
}

cmd_build() {
	cmd_config
	local logf=$MGLRU_CACHE/logs/kernel-build.log
	[ "$FLAVOR" = default ] || logf=$MGLRU_CACHE/logs/kernel-build-$FLAVOR.log
	# Each base's builds log apart: a 6.12 and a 7.3 build at the same
	# time must not write one file.
	[ "$BASE" = 6.12 ] || logf=${logf%.log}-$BASE.log
	step "building the $FLAVOR kernel (log: $logf)" run_logged "$logf" kmake bzImage modules
	log "kernel $(kmake -s kernelrelease 2>/dev/null | tail -n 1): $KDIR/arch/x86/boot/bzImage"
}

case "${1:-build}" in
tree) cmd_tree ;;
config) cmd_config ;;
build) cmd_build ;;
*) die "usage: $0 [tree|config|build]" ;;
esac
