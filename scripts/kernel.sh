#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Prepare, patch, configure and build the project's kernel.
#
#   kernel.sh tree     extract the pinned source into $KDIR (a git tree whose
#                      base commit is the pristine source) and apply patches/
#   kernel.sh config   tree + tinyconfig + configs/*.config, verified
#   kernel.sh build    config + build bzImage and modules (default)
. "$(dirname "$0")/lib.sh"

FRAGMENT=$TOP/configs/mglru-secondary.config
extract_tree() {
	local tarball=/usr/src/$KERNEL_PKG.tar.xz
	local have
	have=$(dpkg-query -W -f='${Version}' "$KERNEL_PKG" 2>/dev/null || true)
	[ "$have" = "$KERNEL_PKG_VERSION" ] ||
		die "$KERNEL_PKG $KERNEL_PKG_VERSION is required (installed: '${have:-none}'); run 'make deps'"
	[ -f "$tarball" ] || die "$tarball missing; reinstall $KERNEL_PKG"
	local tmp=$KDIR.extract
	rm -rf "$tmp"
	mkdir -p "$tmp"
	tar -C "$tmp" -xf "$tarball"
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
		[ -f "$TOP/patches/$p" ] || die "patches/series lists $p, which does not exist"
		if ! git am -q "$TOP/patches/$p"; then
			git am --abort || true
			git reset -q --hard "$BASE_TAG"
			die "patch $p does not apply to $KERNEL_PKG $KERNEL_PKG_VERSION"
		fi
		n=$((n + 1))
	done < <(series_patches)
	echo "$(patches_hash) $(git rev-parse HEAD)" >"$STATE"
	log "applied $n patch(es) from patches/series on $BASE_TAG"
}

cmd_tree() {
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

verify_config() {
	local line opt val bad=0
	while read -r line; do
		case "$line" in
		CONFIG_*=*)
			opt=${line%%=*}
			grep -qxF "$line" "$KDIR/.config" || {
				echo "  $opt: wanted '${line#*=}', got '$(grep "^$opt=" "$KDIR/.config" | cut -d= -f2- || true)'" >&2
				bad=1
			}
			;;
		"# CONFIG_"*" is not set")
			opt=${line#\# }
			opt=${opt%% *}
			if grep -q "^$opt=" "$KDIR/.config"; then
				echo "  $opt: wanted unset, got $(grep "^$opt=" "$KDIR/.config")" >&2
				bad=1
			fi
			;;
		esac
	done <"$FRAGMENT"
	[ "$bad" -eq 0 ] || die "kernel config does not match $FRAGMENT (see above)"
}

gen_config() {
	kmake -s rustavailable >/dev/null 2>&1 || {
		kmake rustavailable || true
		die "Rust toolchain not usable for the kernel (see above); run 'make deps'"
	}
	configure_fragment "$KDIR" "$FRAGMENT"
	kmake -s olddefconfig >/dev/null
	verify_config
	hash_files "$FRAGMENT" >"$KDIR/.git/mglru-config"
}

cmd_config() {
	cmd_tree
	if [ -f "$KDIR/.config" ] && [ "$(cat "$KDIR/.git/mglru-config" 2>/dev/null)" = "$(hash_files "$FRAGMENT")" ]; then
		kmake -s olddefconfig >/dev/null
		verify_config
		log "kernel config up to date"
	else
		step "configuring (tinyconfig + $(basename "$FRAGMENT"))" gen_config
	fi
}

cmd_build() {
	cmd_config
	step "building kernel (log: $MGLRU_CACHE/logs/kernel-build.log)" \
		run_logged "$MGLRU_CACHE/logs/kernel-build.log" kmake bzImage modules
	log "kernel $(kmake -s kernelrelease 2>/dev/null | tail -n 1): $KDIR/arch/x86/boot/bzImage"
}

case "${1:-build}" in
tree) cmd_tree ;;
config) cmd_config ;;
build) cmd_build ;;
*) die "usage: $0 [tree|config|build]" ;;
esac
