#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Build the out-of-tree modules (top-level Kbuild) against $KDIR, the
# tree of $FLAVOR.  The default flavour builds them in the clone (rust/*.ko);
# another flavour builds a copy of the sources under $BUILD_DIR, so that its
# .ko files never replace the default ones; base builds only the C test
# modules (testmod/: the Rust ones need the series' bindings).
. "$(dirname "$0")/lib.sh"
[ -f "$KDIR/Module.symvers" ] || die "kernel ($FLAVOR) not built at $KDIR: run 'make kernel FLAVOR=$FLAVOR'"
src=$(flavor_module_src)
dirs=(testmod)
make_args=()
if flavor_has_rust_modules; then
	dirs+=(rust)
else
	make_args+=(MGLRU_TESTMOD_ONLY=y)
fi
if [ "$src" != "$TOP" ]; then
	# Copy what changed only (a fresh mtime makes kbuild rebuild it);
	# sources gone from the clone go from the copy too.
	for d in "${dirs[@]}"; do
		mkdir -p "$src/$d"
		for f in "$src/$d"/*.rs "$src/$d"/*.c; do
			[ -e "$f" ] && [ ! -e "$TOP/$d/${f##*/}" ] && rm -f "$f" "${f%.*}".{o,ko,mod,mod.c}
		done
		for f in "$TOP/$d"/Kbuild "$TOP/$d"/*.rs "$TOP/$d"/*.c; do
			[ -e "$f" ] || continue
			cmp -s "$f" "$src/$d/${f##*/}" || cp "$f" "$src/$d/${f##*/}"
		done
	done
	cmp -s "$TOP/Kbuild" "$src/Kbuild" || cp "$TOP/Kbuild" "$src/Kbuild"
fi
logf=$MGLRU_CACHE/logs/modules.log
[ "$FLAVOR" = default ] || logf=$MGLRU_CACHE/logs/modules-$FLAVOR.log
step "building out-of-tree modules for the $FLAVOR kernel (log: $logf)" \
	run_logged "$logf" kmake M="$src" "${make_args[@]}" modules
for d in "${dirs[@]}"; do find "$src/$d" -name '*.ko' -printf "    $d/%P\n"; done | sort >&2
