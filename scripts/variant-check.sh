#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make variant-check: the series must also build in a configuration the test
# kernel does not cover, a Rust-enabled kernel without MMU notifiers
# (CONFIG_RUST=y, CONFIG_LRU_GEN=y, no KVM, so CONFIG_MMU_NOTIFIER=n): the
# multi-gen LRU's fallback and the kernel crate must compile without the
# notifier API. The variant also has 32-bit compat (CONFIG_COMPAT=y), which
# the test kernel lacks, so the misc device's compat_ioctl is compiled too.
#
# Builds in its own worktree of the cached kernel tree (at the tree's HEAD,
# i.e. the series as applied), configured as tinyconfig + the project's
# fragment minus KVM, and compiles mm/vmscan.o and the whole rust/ directory
# (kernel crate, its doctests, bindings). Takes a few minutes; not part of
# make check.
. "$(dirname "$0")/lib.sh"
need_default_flavor

FRAGMENT=$TOP/configs/mglru-secondary.config
VDIR=$MGLRU_CACHE/variant-no-mmu-notifier
[ "$BASE" = 6.12 ] || VDIR=$VDIR-$BASE
[ -d "$KDIR/.git" ] || die "no kernel tree at $KDIR: run 'make kernel-tree'"
head=$(git -C "$KDIR" rev-parse HEAD)

worktree() {
	if [ ! -e "$VDIR/.git" ]; then
		rm -rf "$VDIR"
		git -C "$KDIR" worktree prune
		git -C "$KDIR" worktree add -q --detach "$VDIR" "$head"
	fi
	git -C "$VDIR" checkout -q -f --detach "$head"
}
step "worktree $VDIR at $(git -C "$KDIR" log -1 --format='%h %s' "$head")" worktree

configure() {
	configure_fragment "$VDIR" "$FRAGMENT"
	(cd "$VDIR" && scripts/config --disable KVM --disable KVM_AMD --disable VIRTUALIZATION \
		--enable IA32_EMULATION)
	KDIR=$VDIR kmake -s olddefconfig >/dev/null
	local want bad=0
	for want in CONFIG_RUST=y CONFIG_LRU_GEN=y CONFIG_COMPAT=y; do
		grep -qxF "$want" "$VDIR/.config" || { echo "  variant config lacks: $want" >&2; bad=1; }
	done
	# MMU_NOTIFIER has no prompt: unselected, it is absent from .config.
	if grep -q '^CONFIG_MMU_NOTIFIER=y' "$VDIR/.config"; then
		echo "  something still selects CONFIG_MMU_NOTIFIER" >&2
		bad=1
	fi
	[ "$bad" -eq 0 ] || die "could not configure the variant (see above)"
}
step "configuring: fragment without KVM (CONFIG_MMU_NOTIFIER=n), with CONFIG_COMPAT" configure

build() {
	KDIR=$VDIR kmake prepare
	KDIR=$VDIR kmake mm/vmscan.o rust/
}
rc=0
step "building mm/vmscan.o and rust/ (log: $MGLRU_CACHE/logs/variant-no-mmu-notifier.log)" \
	run_logged "$MGLRU_CACHE/logs/variant-no-mmu-notifier.log" build || rc=$?
if [ "$rc" -ne 0 ]; then
	grep -E -A6 '^(error|ERROR)|error:' "$MGLRU_CACHE/logs/variant-no-mmu-notifier.log" | head -n 40 >&2 || true
	die "the series does not build without CONFIG_MMU_NOTIFIER"
fi
log "the series builds with CONFIG_RUST=y, CONFIG_LRU_GEN=y, CONFIG_MMU_NOTIFIER=n and CONFIG_COMPAT=y"
