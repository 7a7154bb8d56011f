#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make lint: the kernel's own Rust checks on the patched tree and on the
# out-of-tree modules, with the kernel's toolchain (rustfmt-web and
# rust-web-clippy match rustc-web):
#   - make rustfmtcheck (every Rust file of the tree, the series' included)
#   - CLIPPY=1 build of the kernel crate (rust/) and of the modules
# Exits non-zero on any formatting difference or clippy warning.
. "$(dirname "$0")/lib.sh"
[ -f "$KDIR/Module.symvers" ] || die "kernel not built at $KDIR: run 'make kernel'"
fail=0
lint_logged() { # NAME CMD...: run, keep the log, fail on warnings/diffs
	local name=$1 logf=$MGLRU_CACHE/logs/lint-$1.log
	shift
	if "$@" >"$logf" 2>&1 && ! grep -qE '^(warning|error)(\[|:)|^Diff in ' "$logf"; then
		log "$name: clean"
	else
		log "$name: FAILED (log: $logf)"
		grep -E -A8 '^(warning|error)(\[|:)|^Diff in ' "$logf" | head -n 60 >&2
		fail=1
	fi
}
lint_logged rustfmtcheck kmake rustfmtcheck
lint_logged rustfmt-modules /usr/bin/rustfmt --check --edition 2021 \
	--config-path "$KDIR/.rustfmt.toml" "$TOP"/rust/*.rs
# Touch the kernel crate's sources so that clippy really runs on them.
touch "$KDIR"/rust/kernel/lib.rs
lint_logged clippy-kernel-crate kmake CLIPPY=1 rust/
touch "$TOP"/rust/*.rs
lint_logged clippy-modules kmake CLIPPY=1 M="$TOP" modules
[ "$fail" -eq 0 ] || die "lint found problems"
log "lint: clean"
