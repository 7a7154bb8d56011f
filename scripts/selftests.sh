#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Build the Rust selftests as static binaries for the test VM.
. "$(dirname "$0")/lib.sh"
cd "$TOP/tools/testing/selftests"
target=x86_64-unknown-linux-gnu
build() {
	RUSTFLAGS="-C target-feature=+crt-static" \
		cargo build --release --locked --target "$target" --bins
}
step "building selftests (log: $MGLRU_CACHE/logs/selftests.log)" \
	run_logged "$MGLRU_CACHE/logs/selftests.log" build
out=$TOP/tools/testing/selftests/target/$target/release
while IFS=: read -r coll t; do
	case "$coll" in '' | '#'*) continue ;; esac
	[ -x "$out/$t" ] || die "selftest $coll:$t listed in kselftest-list.txt was not built"
	if readelf -l "$out/$t" | grep -q 'INTERP'; then
		die "$t is not statically linked"
	fi
done <"$TOP/tools/testing/selftests/kselftest-list.txt"
# The nested guest's initramfs of guest_scenario (memcached from Debian's
# packages): the smoke test in make check boots it.
step "scenario guest image" "$TOP/scripts/scenario-image" >/dev/null
