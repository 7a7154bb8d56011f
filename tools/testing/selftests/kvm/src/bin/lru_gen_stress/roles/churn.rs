// SPDX-License-Identifier: GPL-2.0
//! VM churn: VMs created and destroyed (half of them on THPs) with memslot
//! changes, and processes that exit, or are killed, with a live VM.

use super::ChildCtx;
use crate::opts::vcpu_cpus_args;
use anyhow::{Context, Result};
use mglru_selftest::kvm::{Access, Backing, TouchVm};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

/// Memory of each churn VM.
const CHURN_VM: usize = 4 << 20;
/// Where a churn VM's data memslot moves to.
const MOVED_GPA: u64 = super::guest::MOVED_GPA;

/// VM create/destroy cycles with memslot churn, and processes exiting or
/// killed with live VMs.
pub fn role_churn(seed: u64) -> Result<()> {
    let mut cx = ChildCtx::new(seed);
    let me = std::env::current_exe()?;
    while !cx.stopping() {
        // Every other VM on THPs: 2 MiB host mappings and huge SPTEs, split
        // by the memslot changes below.
        let thp = cx.rng.chance(50);
        let backing = if thp { Backing::Thp } else { Backing::Anon4k };
        let mut vm = TouchVm::new(CHURN_VM, 1, backing)?;
        cx.count("VMs created and destroyed", 1);
        if thp {
            cx.count("VMs on THPs", 1);
        }
        let pages = vm.mem.pages();
        let s = cx.rng.next() as u32 | 1;
        let kind = if thp { "THP" } else { "4K" };
        vm.touch_with(1, 0, pages, Access::Pattern(s))
            .with_context(|| format!("churn VM ({kind}): writing the pattern"))?;
        vm.set_data_slot(false)?;
        vm.set_data_slot(true)?;
        vm.move_data_slot(MOVED_GPA)?;
        if let Some(m) = vm
            .verify_pattern_with(1, 0, pages, s)
            .with_context(|| format!("churn VM ({kind}): verifying after the memslot moved"))?
        {
            println!(
                "VIOLATION integrity: churn VM ({kind}) page {} read {:#x}, expected {:#x} \
                 (host sees {:#x})",
                m.page,
                m.found,
                m.expected,
                vm.mem.read_page_u32(m.page)
            );
        }
        if thp {
            // Partial discard: splits the THP under the VM's feet.
            vm.mem.discard(1, 1)?;
        }
        cx.count("churn memslot cycles", 1);
        drop(vm);
        cx.report();
        if cx.rng.chance(30) {
            let kill = cx.rng.chance(50);
            let mut c = Command::new(&me)
                .args(["--role", if kill { "vm-kill" } else { "vm-exit" }])
                .args(vcpu_cpus_args())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()?;
            if kill {
                // Kill it only once its vCPU ran (it says so), while the
                // vCPU keeps running.
                let mut b = [0u8; 1];
                let ran = c
                    .stdout
                    .take()
                    .is_some_and(|mut o| o.read_exact(&mut b).is_ok());
                std::thread::sleep(cx.rng.ms(0, 50));
                let _ = c.kill();
                let st = c.wait()?;
                if ran && st.signal() == Some(libc::SIGKILL) {
                    cx.count("processes killed with a live VM", 1);
                } else {
                    println!("VIOLATION child: vm-kill child ended on its own ({st}, ran: {ran})");
                }
                continue;
            }
            let st = c.wait()?;
            if st.success() {
                cx.count("processes exited with a live VM", 1);
            } else {
                println!("VIOLATION child: vm-exit child failed: {st}");
            }
        }
    }
    cx.report();
    Ok(())
}

/// Creates a VM, touches its memory, and exits (or keeps touching until
/// killed) without closing anything.
pub fn role_vm_exit(until_killed: bool) -> Result<()> {
    use std::io::Write;
    let mut vm = TouchVm::new(CHURN_VM, 1, Backing::Anon4k)?;
    let pages = vm.mem.pages();
    vm.touch_with(1, 0, pages, Access::Write(0x5eed))?;
    if !until_killed {
        std::process::exit(0);
    }
    std::io::stdout().write_all(b"r")?;
    std::io::stdout().flush()?;
    loop {
        vm.touch_with(1, 0, pages, Access::Write(0x5eed))?;
    }
}
