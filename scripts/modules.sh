#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Build the out-of-tree Rust modules (top-level Kbuild) against $KDIR, the
# tree of $FLAVOR.  The default flavour builds them in the clone (rust/*.ko);
# another flavour builds a copy of the sources under $BUILD_DIR, so that its
# .ko files never replace the default ones; base has no modules (they need
# the series' Rust bindings).
. "$(dirname "$0")/lib.sh"
[ -f "$KDIR/Module.symvers" ] || die "kernel ($FLAVOR) not built at $KDIR: run 'make kernel FLAVOR=$FLAVOR'"
src=$(flavor_module_src)
if [ -z "$src" ]; then
	log "no out-of-tree modules for FLAVOR=$FLAVOR (they need the series' bindings)"
	exit 0
fi
if [ "$src" != "$TOP" ]; then
	# Copy what changed only (a fresh mtime makes kbuild rebuild it);
	# sources gone from the clone go from the copy too.
	mkdir -p "$src/rust"
	for f in "$src"/rust/*.rs; do
		[ -e "$f" ] && [ ! -e "$TOP/rust/${f##*/}" ] && rm -f "$f" "${f%.rs}".{o,ko,mod,mod.c}
	done
	for f in Kbuild rust/Kbuild rust/*.rs; do
		cmp -s "$TOP/$f" "$src/$f" || cp "$TOP/$f" "$src/$f"
	done
fi
logf=$MGLRU_CACHE/logs/modules.log
[ "$FLAVOR" = default ] || logf=$MGLRU_CACHE/logs/modules-$FLAVOR.log
step "building out-of-tree modules for the $FLAVOR kernel (log: $logf)" \
	run_logged "$logf" kmake M="$src" modules
find "$src/rust" -name '*.ko' -printf '    %P\n' | sort >&2
