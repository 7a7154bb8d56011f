#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# The main job (make run): install, build the patched kernel, modules and
# selftests, boot the kernel under QEMU and run the demo in it.
. "$(dirname "$0")/lib.sh"
start=$(date +%s)
step "deps" "$TOP/scripts/deps.sh"
step "kernel" "$TOP/scripts/kernel.sh" build
step "modules" "$TOP/scripts/modules.sh"
step "selftests build" "$TOP/scripts/selftests.sh"
rc=0
step "demo in the test VM" "$TOP/scripts/vm-run" -- "$TOP/scripts/demo" "$@" || rc=$?
log "make run finished in $(($(date +%s) - start))s (exit $rc)"
exit "$rc"
