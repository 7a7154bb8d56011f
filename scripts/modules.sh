#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Build the out-of-tree Rust modules (top-level Kbuild) against $KDIR.
. "$(dirname "$0")/lib.sh"
[ -f "$KDIR/Module.symvers" ] || die "kernel not built at $KDIR: run 'make kernel'"
step "building out-of-tree modules (log: $MGLRU_CACHE/logs/modules.log)" \
	run_logged "$MGLRU_CACHE/logs/modules.log" kmake M="$TOP" modules
find "$TOP/rust" -name '*.ko' -printf '    %P\n' | sort >&2
