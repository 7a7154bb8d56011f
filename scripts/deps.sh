#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Install everything the pipeline needs, idempotently (Debian 12, as root).
. "$(dirname "$0")/lib.sh"

PKGS=(
	rustc-web rust-web-src rust-web-clippy rustfmt-web
	"clang-$LLVM_VER" "lld-$LLVM_VER" "llvm-$LLVM_VER" "libclang-$LLVM_VER-dev"
	flex bison bc libelf-dev libssl-dev cpio busybox-static kmod xz-utils
	qemu-system-x86 ccache make git python3 gcc libc6-dev
	# cargo (crates.io over https) needs the CA bundle, which a minimal
	# Debian lacks; debootstrap builds the fresh-system check's root.
	ca-certificates debootstrap
	# make bench draws its plots with gnuplot.
	gnuplot-nox
	# objdump: the selftest library's unit test disassembles the guest code.
	binutils
)

# The base's kernel source: a package from the machine's sources (6.12), or
# fetched below (7.3).
[ -n "$KERNEL_APT_SOURCE" ] || PKGS+=("$KERNEL_PKG=$KERNEL_PKG_VERSION")

missing=()
for p in "${PKGS[@]}"; do
	name=${p%%=*}
	want=${p#*=}
	have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)
	case "$have" in
	"install ok installed"*)
		[ "$name" = "$p" ] || [ "${have##* }" = "$want" ] || missing+=("$p")
		;;
	*) missing+=("$p") ;;
	esac
done
command -v cargo >/dev/null || missing+=(cargo-web)

if [ "${#missing[@]}" -gt 0 ]; then
	[ "$(id -u)" -eq 0 ] || die "need root to install: ${missing[*]}"
	log "installing from Debian's archive: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	run_logged "$MGLRU_CACHE/logs/apt-update.log" apt-get update
	if ! run_logged "$MGLRU_CACHE/logs/apt-install.log" \
		apt-get install -y --no-install-recommends "${missing[@]}"; then
		apt-cache policy "$KERNEL_PKG" >&2 || true
		die "apt-get install failed (is $KERNEL_PKG=$KERNEL_PKG_VERSION still in the archive?)"
	fi
fi

# A base from another suite: apt-get download with a sources list of its own
# (see lib.sh), into the cache.  apt verifies the suite's InRelease signature
# against Debian's archive keyring and the .deb against the signed hashes.
fetch_kernel_deb() {
	mkdir -p "$KERNEL_APT_DIR/lists/partial" "$KERNEL_APT_DIR/archives/partial"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $KERNEL_APT_SOURCE" \
		>"$KERNEL_APT_DIR/sources.list"
	local opts
	mapfile -t opts < <(kernel_apt_opts)
	apt-get "${opts[@]}" update
	(cd "$KERNEL_APT_DIR/archives" && apt-get "${opts[@]}" download "$KERNEL_PKG=$KERNEL_PKG_VERSION")
	dpkg-deb --info "$KERNEL_DEB" >/dev/null
}
if [ -n "$KERNEL_APT_SOURCE" ] && [ ! -f "$KERNEL_DEB" ]; then
	log "fetching $KERNEL_PKG $KERNEL_PKG_VERSION ($KERNEL_APT_SOURCE) into $KERNEL_APT_DIR"
	run_logged "$MGLRU_CACHE/logs/apt-$BASE.log" fetch_kernel_deb ||
		die "could not fetch $KERNEL_PKG=$KERNEL_PKG_VERSION (is it still in $KERNEL_APT_SOURCE?)"
fi

# Derived from what is installed now, i.e. after the install above.
rust_lib=$(rust_lib_src)
[ -n "$rust_lib" ] && [ -d "$rust_lib/core" ] ||
	die "rust-web-src did not provide /usr/src/rustc-*/library"
ensure_ccache_bin
command -v cargo >/dev/null || die "cargo-web did not provide cargo"

if [ ! -x "$BINDGEN" ]; then
	log "installing bindgen-cli $BINDGEN_VERSION from crates.io into $TOOLS_DIR"
	run_logged "$MGLRU_CACHE/logs/bindgen-install.log" \
		cargo install --locked bindgen-cli --version "$BINDGEN_VERSION" \
		--root "$TOOLS_DIR/bindgen-$BINDGEN_VERSION"
fi

log "toolchain: $(/usr/bin/rustc --version), $("$BINDGEN" --version), clang $(clang --version | sed -n 's/.*version \([0-9.]*\).*/\1/p;q')"
if [ -n "$KERNEL_APT_SOURCE" ]; then
	log "kernel source: $KERNEL_DEB"
else
	log "kernel source: $KERNEL_PKG $(dpkg-query -W -f='${Version}' "$KERNEL_PKG")"
fi
