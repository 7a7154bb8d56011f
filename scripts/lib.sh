# SPDX-License-Identifier: GPL-2.0
# Shared settings and helpers for the mglru-secondary pipeline scripts.
# Sourced, never executed.

set -euo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The kernels this project targets (BASE=, default 6.12): Debian's package
# version is pinned exactly, and each base has its own patch series
# (patches/$BASE/), trees, builds and bindgen.
#   6.12  linux-source-6.12 from the machine's own apt sources (Debian 13's
#         LTS kernel, as bookworm's security archive carries it): the default
#   7.3   linux-source-7.3 from trixie-backports, current mainline as Debian
#         ships it; fetched with apt's signature checks into $MGLRU_CACHE,
#         never installed (the machine stays a Debian 12 machine)
BASE=${BASE:-6.12}
case "$BASE" in
6.12)
	KERNEL_PKG=linux-source-6.12
	KERNEL_PKG_VERSION=6.12.117-1~deb12u1
	KERNEL_VERSION=6.12.117
	KERNEL_APT_SOURCE=
	BINDGEN_VERSION=0.69.5
	;;
7.3)
	KERNEL_PKG=linux-source-7.3
	KERNEL_PKG_VERSION=7.3.4-1~bpo13+1
	KERNEL_VERSION=7.3.4
	KERNEL_APT_SOURCE="http://deb.debian.org/debian trixie-backports main"
	# 7.3's scripts/min-tool-version.sh asks for 0.71.1.
	BINDGEN_VERSION=0.71.1
	;;
*) printf 'ERROR: BASE=%s: want 6.12 or 7.3\n' "$BASE" >&2; exit 2 ;;
esac
export BASE
PATCH_DIR=$TOP/patches/$BASE

# Toolchain pins (both bases).
LLVM_VER=19

# Nothing below may look at what is installed when this file is sourced:
# deps.sh sources it before it installs the packages (issue 12).  Values that
# depend on installed files are functions, evaluated when used.

# The Rust standard library source the kernel's Rust build needs
# (rust-web-src installs it as /usr/src/rustc-VERSION/library).
rust_lib_src() {
	ls -d /usr/src/rustc-*/library 2>/dev/null | sort -V | tail -n 1 || true
}

# Everything built lives outside the git clone, keyed by version, so fresh
# clones (CI) reuse it.
MGLRU_CACHE=${MGLRU_CACHE:-/var/cache/mglru-secondary}

# Kernel flavours (FLAVOR=, default "default"), each built in its own tree
# so that switching never rebuilds another (they share ccache):
#   default  the series, configs/mglru-secondary.config: the kernel of make
#            run / check / bench
#   debug    the series, plus configs/debug.config (KASAN, DEBUG_VM,
#            lockdep, PROVE_RCU, KFENCE, kmemleak, ...): make stress
#   base     the pristine base kernel (no patches), configs/mglru-secondary.config
#            + configs/base.config (only the name, -base): make check-base
# The default tree is a git repository (tag base-$KERNEL_VERSION, branch
# mglru);
# the others are git worktrees of it, checked out at its HEAD (debug) or at
# the tag (base).
FLAVOR=${FLAVOR:-default}
case "$FLAVOR" in
default | debug | base) ;;
*) printf 'ERROR: FLAVOR=%s: want default, debug or base\n' "$FLAVOR" >&2; exit 2 ;;
esac
MAIN_KDIR=$MGLRU_CACHE/linux-${KERNEL_PKG_VERSION//\~/_}
if [ "$FLAVOR" = default ]; then
	KDIR=${KDIR:-$MAIN_KDIR}
elif [ -n "${KDIR:-}" ] && [ "$KDIR" != "$MAIN_KDIR-$FLAVOR" ]; then
	# An exported KDIR would silently build or boot the wrong tree.
	printf 'ERROR: KDIR=%s conflicts with FLAVOR=%s (unset one of them)\n' "$KDIR" "$FLAVOR" >&2
	exit 2
else
	KDIR=$MAIN_KDIR-$FLAVOR
fi

# Bases whose source is not in the machine's apt sources (KERNEL_APT_SOURCE
# set) are fetched by deps.sh into $KERNEL_APT_DIR with apt itself: its own
# sources list limited to that suite, signed-by Debian's archive keyring, so
# the Release signature and the package's hash are checked exactly as for an
# install; the .deb is unpacked, never installed.
KERNEL_APT_DIR=$MGLRU_CACHE/apt-$BASE
KERNEL_DEB=$KERNEL_APT_DIR/archives/${KERNEL_PKG}_${KERNEL_PKG_VERSION}_all.deb

# apt-get/apt-cache options that confine apt to $KERNEL_APT_DIR.
kernel_apt_opts() {
	printf '%s\n' -o "Dir::Etc::SourceList=$KERNEL_APT_DIR/sources.list" \
		-o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$KERNEL_APT_DIR/lists" \
		-o "Dir::Cache=$KERNEL_APT_DIR" -o "Dir::Cache::Archives=$KERNEL_APT_DIR/archives" \
		-o Debug::NoLocking=1 -o APT::Sandbox::User=root
}

# Where a base's committed results go: results/ for 6.12 (as before the
# second base), results/7.3/ for 7.3.
results_dir() {
	if [ "$BASE" = 6.12 ]; then echo "$TOP/results"; else echo "$TOP/results/$BASE"; fi
}

# Scripts that work on the series' own tree (export, bisect, variants)
# call this first.
need_default_flavor() {
	[ "$FLAVOR" = default ] ||
		{ printf 'ERROR: %s works on the default flavour only (FLAVOR=%s)\n' "$(basename "$0")" "$FLAVOR" >&2; exit 2; }
}
TOOLS_DIR=$MGLRU_CACHE/tools
BINDGEN=$TOOLS_DIR/bindgen-$BINDGEN_VERSION/bin/bindgen
BUILD_DIR=${BUILD_DIR:-$MGLRU_CACHE/build}
export CCACHE_DIR=${CCACHE_DIR:-$MGLRU_CACHE/ccache}

# ccache in masquerade mode: "CC=ccache clang" would leak into rustc's
# -Clinker= for host programs, so put clang symlinks to ccache first in PATH.
# The directory is on PATH from the start (a missing directory is harmless);
# the symlink is made by ensure_ccache_bin once ccache is installed.
CCACHE_BIN=$TOOLS_DIR/ccache-bin
export PATH=$CCACHE_BIN:/usr/lib/llvm-$LLVM_VER/bin:$PATH
export LIBCLANG_PATH=/usr/lib/llvm-$LLVM_VER/lib

ensure_ccache_bin() {
	[ ! -e "$CCACHE_BIN/clang" ] || return 0
	command -v ccache >/dev/null || return 0
	mkdir -p "$CCACHE_BIN"
	ln -sf "$(command -v ccache)" "$CCACHE_BIN/clang"
}

# Arguments every kernel make invocation (tree and out-of-tree modules) gets.
kmake_args() {
	printf '%s\n' LLVM=1 LOCALVERSION= \
		RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTFMT=/usr/bin/rustfmt \
		CLIPPY_DRIVER=/usr/bin/clippy-driver "RUST_LIB_SRC=$(rust_lib_src)" \
		"BINDGEN=$BINDGEN" "-j$(nproc)"
}

kmake() {
	local args
	ensure_ccache_bin
	mapfile -t args < <(kmake_args)
	make -C "$KDIR" "${args[@]}" "$@"
}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# step NAME CMD...: run CMD, print how long it took; on failure the caller's
# set -e ends the script after the message.
step() {
	local name=$1 start rc=0
	shift
	start=$(date +%s.%N)
	log "$name ..."
	# Not "$@" || rc=$?: that would switch off errexit inside "$@".
	set +e
	(set -e; "$@")
	rc=$?
	set -e
	local secs
	secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
	if [ "$rc" -eq 0 ]; then
		log "$name: done in ${secs}s"
	else
		log "$name: FAILED (exit $rc) after ${secs}s"
	fi
	return "$rc"
}

# run_logged LOG CMD...: run CMD with output to LOG, printing a progress dot
# line every 30s; on failure print the log's tail.
run_logged() {
	local logf=$1 rc=0
	shift
	mkdir -p "$(dirname "$logf")"
	(set -e; "$@") >"$logf" 2>&1 &
	local pid=$! n=0
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		n=$((n + 1))
		if [ $((n % 30)) -eq 0 ]; then
			printf '    ... %ds, last: %s\n' "$n" "$(tail -n 1 "$logf" | cut -c1-100)" >&2
		fi
	done
	wait "$pid" || rc=$?
	if [ "$rc" -ne 0 ]; then
		printf -- '---- last 40 lines of %s ----\n' "$logf" >&2
		tail -n 40 "$logf" >&2
		printf -- '----\n' >&2
	fi
	return "$rc"
}

# hash_files FILE...: one hash of the files' contents; missing files count as
# empty.
hash_files() {
	local f
	for f in "$@"; do
		if [ -f "$f" ]; then cat "$f"; fi
	done | sha256sum | cut -d' ' -f1
}

# configure_fragment DIR FRAGMENT...: tinyconfig plus the FRAGMENTs in the
# kernel tree at DIR (the caller runs olddefconfig after any further changes).
configure_fragment() {
	local dir=$1
	shift
	KDIR=$dir kmake -s tinyconfig >/dev/null
	(cd "$dir" && KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m -Q .config "$@" >/dev/null)
}

# The config fragments of $FLAVOR, in merge order.
flavor_fragments() {
	echo "$TOP/configs/mglru-secondary.config"
	[ ! -f "$TOP/configs/$BASE.config" ] || echo "$TOP/configs/$BASE.config"
	[ "$FLAVOR" = default ] || echo "$TOP/configs/$FLAVOR.config"
}

# Where the out-of-tree modules of $FLAVOR are built (kbuild's M= puts the
# .ko next to the sources, so other flavours build in a copy); empty for
# base, which lacks the bindings they need.
flavor_module_src() {
	case "$FLAVOR" in
	default) if [ "$BASE" = 6.12 ]; then echo "$TOP"; else echo "$BUILD_DIR/modules-$BASE-$FLAVOR"; fi ;;
	debug | base) if [ "$BASE" = 6.12 ]; then echo "$BUILD_DIR/modules-$FLAVOR"; else echo "$BUILD_DIR/modules-$BASE-$FLAVOR"; fi ;;
	esac
}

# Whether the flavour has the Rust modules (rust/): they need the series'
# bindings, so base has only the C test modules (testmod/).
flavor_has_rust_modules() { [ "$FLAVOR" != base ]; }

# The patch series and the state of the kernel tree it was applied to.
BASE_TAG=base-$KERNEL_VERSION
STATE=$MAIN_KDIR/.git/mglru-applied

# checkpatch FILE: runs the pinned tree's checkpatch.pl on a patch and
# prints its report; the last line is "<errors> <warnings>" from its
# summary.  Fails (no counts) if checkpatch did not run to its summary: a
# missing perl module or a crash is not "0 errors".
checkpatch() {
	local r sum
	r=$(cd "$KDIR" && perl scripts/checkpatch.pl --no-tree --no-signoff --show-types "$1" 2>&1) || true
	sum=$(printf '%s\n' "$r" | sed -n 's/^total: \([0-9]*\) errors, \([0-9]*\) warnings,.*/\1 \2/p' | tail -n 1)
	printf '%s\n' "$r" | grep -E '^(ERROR|WARNING|CHECK):|^#[0-9]+:|^\+' || true
	if [ -z "$sum" ]; then
		printf 'checkpatch.pl did not run to its summary on %s:\n%s\n' "$1" "$(printf '%s\n' "$r" | tail -n 5)"
		return 1
	fi
	echo "$sum"
}

series_patches() {
	[ -f "$PATCH_DIR/series" ] || return 0
	grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$PATCH_DIR/series"
}

patches_hash() {
	local files=("$PATCH_DIR/series")
	local p
	while read -r p; do files+=("$PATCH_DIR/$p"); done < <(series_patches)
	hash_files "${files[@]}"
}
