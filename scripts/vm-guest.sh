#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Runs inside the test VM, in the host's (read-only) root: executes the
# command that scripts/vm-run wrote to /run/vm/cmd.sh with its output on the
# second serial port, and leaves its exit status in /run/vm/rc.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8
. /run/vm/env
stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec </dev/null >/dev/ttyS1 2>&1
cd "$VM_CWD" 2>/dev/null || cd "$VM_PROJECT"
/bin/sh /run/vm/cmd.sh
echo $? >/run/vm/rc
