# SPDX-License-Identifier: GPL-2.0
# mglru-secondary: developer and CI entry points.  Out-of-tree kernel
# modules are described by ./Kbuild (kbuild reads Kbuild, not this file).
#
#   make run            the main job: set up, build, boot, demo
#   make check          all tests on one base; ends with "N passed, N failed,
#                       N skipped"
#   make check-all      make check on 6.12, then on 7.3 (CI), summed
#   make check T=NAME   host tests + only the named VM selftest(s)
#   make vm-run -- CMD  run CMD as root in the test VM (or CMD="...")
#   make bisect-check   build the kernel at every patch of the series
#   make variant-check  build mm/vmscan.o and rust/ without CONFIG_MMU_NOTIFIER
#   make lint           rustfmtcheck + CLIPPY=1 for the kernel crate and modules
#   make bench          aging benchmark in the VM: base kernel, 0x8 off/on, floor,
#                       results and plots in results/ (B="-m 64M -v 2" to narrow)
#   make stress         the chaos stress test on the debug kernel (KASAN, lockdep,
#                       kmemleak, ...), 20 min (STRESS="--duration 5m" to change)
#   make scenario       QEMU/KVM guest running memcached while the host reclaims
#                       it: 0x8 on/off and the base kernel, results/scenario.*
#                       (SCENARIO_ROUNDS=3; SCENARIO="--phase 20" passes options)
#   make check-base     the pristine base kernel vs the series with 0x8 clear: same pages
#                       promoted; new interfaces absent on base
#
# BASE=6.12|7.3 picks the base kernel and its series (patches/$BASE/;
# default 6.12), for every target: make check BASE=7.3, make bench BASE=7.3.
# FLAVOR=default|debug|base picks the kernel (own tree and build each, shared
# ccache): make kernel FLAVOR=debug, make vm-run FLAVOR=base -- CMD.
#   make deps | kernel | modules | selftests | kernel-tree | export-patches
#   make clean          remove build outputs in this clone

SHELL := /bin/bash
S := $(CURDIR)/scripts
export FLAVOR BASE

# make vm-run -- CMD ARGS: everything after vm-run is the command.
ifeq (vm-run,$(firstword $(MAKECMDGOALS)))
VM_ARGS := $(wordlist 2,$(words $(MAKECMDGOALS)),$(MAKECMDGOALS))
ifneq ($(VM_ARGS),)
$(eval $(VM_ARGS):;@:)
endif
endif

.PHONY: all run check check-all check-base stress bench scenario bisect-check variant-check lint deps kernel kernel-tree export-patches modules selftests vm-run clean

all: run

run:
	@$(S)/run.sh $(T)

check:
	@$(S)/check.sh $(T)

check-all:
	@$(S)/check-all.sh $(T)

deps:
	@$(S)/deps.sh

bench:
	@$(S)/bench.sh $(B)

stress:
	@$(S)/stress.sh $(STRESS)

scenario:
	@$(S)/scenario.sh $(SCENARIO)

check-base:
	@$(S)/check-base.sh

bisect-check: deps
	@$(S)/bisect-check.sh

variant-check: deps
	@$(S)/variant-check.sh

lint: modules
	@$(S)/lint.sh

kernel: deps
	@$(S)/kernel.sh build

kernel-tree: deps
	@$(S)/kernel.sh tree
	@. $(S)/lib.sh && echo "kernel tree: $$KDIR (branch mglru on tag base-$$KERNEL_VERSION)"

export-patches:
	@$(S)/export-patches.sh

modules: kernel
	@$(S)/modules.sh

selftests:
	@$(S)/selftests.sh

vm-run:
	@$(S)/vm-run -- $(if $(CMD),"$(CMD)",$(VM_ARGS))

clean:
	@. $(S)/lib.sh && [ ! -d "$$KDIR" ] || kmake M=$(CURDIR) clean >/dev/null
	rm -rf tools/testing/selftests/target
