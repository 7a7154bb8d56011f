// SPDX-License-Identifier: GPL-2.0
//! Smoke test of nested KVM in the test VM: kvm_amd with NPT, the TDP MMU,
//! and a guest that writes its memory and exits through an I/O port.

use mglru_selftest::kvm::{Access, Backing, TouchVm};
use mglru_selftest::{bail, features, ktap::Ktap, Result};

fn npt_on() -> Result<()> {
    if !features::cpu_has_flag("svm")? {
        bail!("CPU lacks svm (QEMU must run with -cpu max)");
    }
    match features::module_param("kvm_amd", "npt") {
        Some(v) if features::param_is_true(&v) => Ok(()),
        Some(v) => bail!("kvm_amd.npt is {v}"),
        None => bail!("kvm_amd not loaded (no /sys/module/kvm_amd/parameters/npt)"),
    }
}

fn tdp_mmu_on() -> Result<()> {
    match features::module_param("kvm", "tdp_mmu") {
        Some(v) if features::param_is_true(&v) => Ok(()),
        Some(v) => bail!("kvm.tdp_mmu is {v}"),
        None => bail!("/sys/module/kvm/parameters/tdp_mmu missing"),
    }
}

fn guest_writes_memory(vcpus: usize) -> Result<()> {
    const MEM: usize = 16 << 20;
    let mut vm = TouchVm::new(MEM, vcpus, Backing::Anon4k)?;
    let pages = vm.mem.pages();
    let pattern = 0x6d67_6c72; // "mglr"
    vm.touch_all(0, pages, Access::Write(pattern))?;
    let wrong = (0..pages)
        .filter(|&i| vm.mem.read_page_u32(i) != pattern)
        .count();
    if wrong != 0 {
        bail!("{wrong} of {pages} pages lack the guest's write");
    }
    // A strided read pass on one vCPU must also complete.
    vm.touch(0, 1, pages / 2, 2, Access::Read)?;
    Ok(())
}

/// KVM in the test VM: AMD NPT and the TDP MMU are on, a guest runs. Exit
/// status: 0 pass, 1 fail, 4 skip, 2 usage error.
#[derive(clap::Parser, Debug)]
#[command(name = "kvm_smoke_test", version, about, long_about = None)]
struct Opts {}

fn main() {
    let _ = <Opts as clap::Parser>::parse();
    let mut t = Ktap::new(4);
    t.check("kvm_amd_npt_enabled", npt_on());
    t.check("kvm_tdp_mmu_enabled", tdp_mmu_on());
    t.check("nested_guest_1vcpu_writes_memory", guest_writes_memory(1));
    t.check("nested_guest_2vcpu_writes_memory", guest_writes_memory(2));
    t.finish();
}
