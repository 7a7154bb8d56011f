// SPDX-License-Identifier: GPL-2.0
//! A minimal KVM guest for aging tests, on kvm-ioctls/kvm-bindings.
//!
//! The guest runs in 64-bit long mode on page tables that map guest
//! physical memory to itself in 2 MiB pages, so a guest physical address is
//! the address its code uses, and data memory can reach [`MAX_DATA`]. Its
//! programs walk a range of pages, reading or writing one dword per page,
//! then leave through an `out` to [`DONE_PORT`].
//!
//! Data memory is memslot 0 at guest physical address 0. The code and the
//! page tables live in their own small memslot at [`CODE_GPA`], so the
//! data holds only what the programs write: aging and evicting it page by
//! page never touches a page table. The guest's walks do make a few pages
//! of the code memslot young besides its code page: the PML4, the PDPT,
//! the code's page directory and one per GiB of data it touched (5 pages
//! for a VM under 1 GiB).

mod guest;
mod host_mem;
mod run;

pub use guest::{
    BAD_PORT, CODE_GPA, DONE_PORT, MAX_DATA, MAX_DATA_SVM, NESTED_RESERVED_PAGES, PAGE_SIZE,
};
pub use host_mem::{Backing, HostMem};
pub use run::{allowed_cpus, check_cpu, set_run_limit, set_vcpu_cpus, vcpu_cpus};

use anyhow::{bail, Context, Result};
use guest::*;
use kvm_bindings::{
    kvm_msr_entry, kvm_regs, kvm_segment, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use run::{run_until, run_until_done};
use std::os::fd::AsRawFd;

const DATA_SLOT: u32 = 0;
const CODE_SLOT: u32 = 1;
/// First memslot id of the data pieces after the first ([`TouchVm::set_data_slots`]).
const EXTRA_SLOT: u32 = 2;
/// Most data memslots [`TouchVm::set_data_slots`] creates.
pub const MAX_DATA_PIECES: usize = 8;
const LOG_SLOT: u32 = 16;

/// How the guest accesses each page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Load one dword per page.
    Read,
    /// Store this value into the first dword of each page.
    Write(u32),
    /// Store `seed + i` into the first dword of page `i` of the range
    /// (checked by [`TouchVm::verify_pattern_with`]).
    Pattern(u32),
}

/// A page whose first dword was not what [`Access::Pattern`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Data page index.
    pub page: usize,
    /// What the guest read.
    pub found: u32,
    /// What it expected.
    pub expected: u32,
}

/// A VM whose vCPUs touch ranges of its data memory on request.
///
/// Fields drop in declaration order: the vCPU and VM fds are closed before
/// the guest memory is unmapped.
pub struct TouchVm {
    vcpus: Vec<VcpuFd>,
    vm: VmFd,
    /// Guest data memory (guest physical 0..len).
    pub mem: HostMem,
    _code: HostMem,
    /// Per-page latency log of [`TouchVm::timed_write_with`].
    log: HostMem,
    /// Guest physical address of data page 0 ([`TouchVm::move_data_slot`]).
    data_gpa: u64,
    _kvm: Kvm,
}

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// CPUID 0x8000_0001 ECX: SVM.
const CPUID_SVM: u32 = 1 << 2;

/// A flat segment: `long` makes a 64-bit code segment (L=1, D=0).
fn flat_segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl TouchVm {
    /// Creates a VM with `mem_bytes` of data memory, at most [`MAX_DATA`],
    /// and `nr_vcpus` vCPUs.
    pub fn new(mem_bytes: usize, nr_vcpus: usize, backing: Backing) -> Result<Self> {
        Self::build(mem_bytes, nr_vcpus, backing, false)
    }

    /// Like [`TouchVm::new`], with AMD SVM exposed to the guest (SVM in its
    /// CPUID, `EFER.SVME` set, `VM_HSAVE_PA` pointing into the reserved
    /// pages), so that [`TouchVm::run_nested_once`] can run a nested guest,
    /// and at most [`MAX_DATA_SVM`] of data memory. Fails if KVM does not
    /// offer nested SVM.
    pub fn new_with_svm(mem_bytes: usize, nr_vcpus: usize, backing: Backing) -> Result<Self> {
        if mem_bytes < NESTED_RESERVED_PAGES * PAGE_SIZE {
            bail!("a nested guest needs at least {NESTED_RESERVED_PAGES} pages");
        }
        Self::build(mem_bytes, nr_vcpus, backing, true)
    }

    fn build(mem_bytes: usize, nr_vcpus: usize, backing: Backing, svm: bool) -> Result<Self> {
        let (max, why) = if svm {
            (
                MAX_DATA_SVM,
                "a VM with a nested guest, whose L2 runs 32-bit,",
            )
        } else {
            (MAX_DATA, "the guest")
        };
        if mem_bytes > max {
            bail!(
                "guest memory of {mem_bytes} bytes exceeds the {} GiB {why} can address",
                max >> 30
            );
        }
        if nr_vcpus == 0 {
            bail!("need at least one vCPU");
        }
        let kvm = Kvm::new().context("opening /dev/kvm")?;
        let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
        let mem = HostMem::new(mem_bytes, backing)?;
        let mut code = HostMem::new(CODE_BYTES, Backing::Anon4k)?;
        code.write_at(0, &programs_page())?;
        code.write_at((PAGE_TABLES_GPA - CODE_GPA) as usize, &guest_page_tables())?;
        // Long mode needs CPUID to offer it (KVM checks CR4.PAE and
        // EFER.LME against the guest's CPUID). SVM stays hidden unless asked
        // for, as it was when these guests had no CPUID.
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .context("KVM_GET_SUPPORTED_CPUID")?;
        let ext = cpuid
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == 0x8000_0001)
            .context("KVM_GET_SUPPORTED_CPUID has no leaf 0x80000001")?;
        if svm && ext.ecx & CPUID_SVM == 0 {
            bail!("KVM does not offer SVM to guests (kvm_amd.nested=0 or not AMD)");
        }
        if !svm {
            ext.ecx &= !CPUID_SVM;
        }
        let log = HostMem::new(
            (mem.pages() * 4).next_multiple_of(PAGE_SIZE),
            Backing::Anon4k,
        )?;
        for (slot, gpa, m) in [
            (DATA_SLOT, 0, &mem),
            (CODE_SLOT, CODE_GPA, &code),
            (LOG_SLOT, LOG_GPA, &log),
        ] {
            let region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: m.len() as u64,
                userspace_addr: m.as_ptr() as u64,
            };
            // SAFETY: the host memory outlives the VM: the `HostMem`s are
            // fields of `TouchVm` declared after `vm`, so the VM fd is
            // closed before they are unmapped.
            unsafe { vm.set_user_memory_region(region) }
                .with_context(|| format!("KVM_SET_USER_MEMORY_REGION slot {slot}"))?;
        }
        let mut vcpus = Vec::with_capacity(nr_vcpus);
        for id in 0..nr_vcpus {
            let vcpu = vm
                .create_vcpu(id as u64)
                .with_context(|| format!("KVM_CREATE_VCPU {id}"))?;
            vcpu.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;
            let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
            sregs.cs = flat_segment(0x8, 0xb, true);
            for s in [
                &mut sregs.ds,
                &mut sregs.es,
                &mut sregs.fs,
                &mut sregs.gs,
                &mut sregs.ss,
            ] {
                *s = flat_segment(0x10, 0x3, false);
            }
            sregs.cr0 |= CR0_PE | CR0_PG;
            sregs.cr3 = PAGE_TABLES_GPA;
            sregs.cr4 |= CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
            if svm {
                sregs.efer |= EFER_SVME;
                let msrs = Msrs::from_entries(&[kvm_msr_entry {
                    index: MSR_VM_HSAVE_PA,
                    data: NESTED_HSAVE,
                    ..Default::default()
                }])
                .map_err(|e| anyhow::anyhow!("building kvm_msrs: {e:?}"))?;
                if vcpu.set_msrs(&msrs).context("KVM_SET_MSRS")? != 1 {
                    bail!("KVM_SET_MSRS did not take MSR_VM_HSAVE_PA");
                }
            }
            vcpu.set_sregs(&sregs)
                .context("KVM_SET_SREGS (long mode)")?;
            vcpus.push(vcpu);
        }
        Ok(Self {
            vcpus,
            vm,
            mem,
            _code: code,
            log,
            data_gpa: 0,
            _kvm: kvm,
        })
    }

    /// Deletes (`present == false`) or re-creates the data memslot, as a
    /// VMM does when it remaps guest memory. No vCPU may run meanwhile
    /// (they would exit to userspace on the missing memory).
    pub fn set_data_slot(&self, present: bool) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot: DATA_SLOT,
            flags: 0,
            guest_phys_addr: self.data_gpa,
            memory_size: if present { self.mem.len() as u64 } else { 0 },
            userspace_addr: self.mem.as_ptr() as u64,
        };
        // SAFETY: the region is `self.mem`, which outlives the VM (see
        // `new`); size 0 deletes the slot.
        unsafe { self.vm.set_user_memory_region(region) }.with_context(|| {
            format!("KVM_SET_USER_MEMORY_REGION slot {DATA_SLOT} present={present}")
        })
    }

    /// Moves the data memslot to guest physical address `gpa`
    /// (`KVM_SET_USER_MEMORY_REGION` with a new address: KVM's `KVM_MR_MOVE`,
    /// which zaps the old mappings); the guest then finds data page `i` at
    /// `gpa + i * PAGE_SIZE`, backed by the same host pages. No vCPU may run
    /// meanwhile. Only for the single data memslot of [`TouchVm::new`].
    pub fn move_data_slot(&mut self, gpa: u64) -> Result<()> {
        if !gpa.is_multiple_of(PAGE_SIZE as u64)
            || gpa
                .checked_add(self.mem.len() as u64)
                .is_none_or(|e| e > CODE_GPA)
        {
            bail!("data memslot at {gpa:#x} is unaligned or overlaps the code at {CODE_GPA:#x}");
        }
        let region = kvm_userspace_memory_region {
            slot: DATA_SLOT,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: self.mem.len() as u64,
            userspace_addr: self.mem.as_ptr() as u64,
        };
        // SAFETY: the region is `self.mem`, which outlives the VM (see `new`).
        unsafe { self.vm.set_user_memory_region(region) }
            .with_context(|| format!("moving memslot {DATA_SLOT} to {gpa:#x}"))?;
        self.data_gpa = gpa;
        Ok(())
    }

    /// Guest physical address of data page 0.
    pub fn data_gpa(&self) -> u64 {
        self.data_gpa
    }

    /// Has the first `n` vCPUs check, each for its share of pages
    /// `first..first+count`, that page `i` holds `seed + i` (what
    /// [`Access::Pattern`]`(seed)` wrote over the same range); returns the
    /// first mismatch any of them found.
    pub fn verify_pattern_with(
        &mut self,
        n: usize,
        first: usize,
        count: usize,
        seed: u32,
    ) -> Result<Option<Mismatch>> {
        if n == 0 || n > self.vcpus.len() || count == 0 || first + count > self.mem.pages() {
            bail!("bad pattern check: {n} vCPUs, pages {first}+{count}");
        }
        let base = self.data_gpa;
        let found = std::sync::Mutex::new(None);
        self.split_over_vcpus(n, first, count, |vcpu, lo, hi| {
            let regs = kvm_regs {
                rip: CODE_GPA + PATTERN_VERIFY_LOOP.off,
                rflags: 0x2,
                rsi: base + (lo * PAGE_SIZE) as u64,
                rdi: PAGE_SIZE as u64,
                rcx: (hi - lo) as u64,
                rdx: u64::from(seed.wrapping_add((lo - first) as u32)),
                ..Default::default()
            };
            vcpu.set_regs(&regs).context("KVM_SET_REGS")?;
            if run_until(vcpu, &[BAD_PORT])? == BAD_PORT {
                let r = vcpu.get_regs().context("KVM_GET_REGS")?;
                let m = Mismatch {
                    page: ((r.rsi - base) / PAGE_SIZE as u64) as usize,
                    found: r.rax as u32,
                    expected: r.rdx as u32,
                };
                found.lock().unwrap().get_or_insert(m);
            }
            Ok(())
        })?;
        Ok(found.into_inner().unwrap())
    }

    /// Replaces the data memslot by one memslot per `(first, count)` piece
    /// of data pages, each at its own guest physical address and backed by
    /// the same host pages as before, leaving the pages between pieces in no
    /// memslot (holes). Pieces must be sorted and disjoint. No vCPU may run
    /// meanwhile, and a vCPU must touch only pages inside a piece afterwards.
    pub fn set_data_slots(&self, pieces: &[(usize, usize)]) -> Result<()> {
        let pages = self.mem.pages();
        let mut end = 0;
        for &(first, count) in pieces {
            if count == 0 || first < end || first + count > pages {
                bail!(
                    "memslot pieces {pieces:?} are not sorted, disjoint and inside {pages} pages"
                );
            }
            end = first + count;
        }
        if pieces.is_empty() || pieces.len() > MAX_DATA_PIECES {
            bail!(
                "want 1 to {MAX_DATA_PIECES} memslot pieces, got {}",
                pieces.len()
            );
        }
        if self.data_gpa != 0 {
            bail!(
                "the data memslot was moved to {:#x}: move it back first",
                self.data_gpa
            );
        }
        self.set_data_slot(false)?;
        for (k, &(first, count)) in pieces.iter().enumerate() {
            let slot = if k == 0 {
                DATA_SLOT
            } else {
                EXTRA_SLOT + k as u32 - 1
            };
            let region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: (first * PAGE_SIZE) as u64,
                memory_size: (count * PAGE_SIZE) as u64,
                userspace_addr: self.mem.as_ptr() as u64 + (first * PAGE_SIZE) as u64,
            };
            // SAFETY: the region is part of `self.mem`, which outlives the VM
            // (see `new`).
            unsafe { self.vm.set_user_memory_region(region) }
                .with_context(|| format!("KVM_SET_USER_MEMORY_REGION slot {slot} {region:?}"))?;
        }
        Ok(())
    }

    /// Deletes the `n` memslots [`TouchVm::set_data_slots`] made (the
    /// pieces' count), so that KVM maps no data page any more. No vCPU may
    /// run meanwhile.
    pub fn delete_data_slots(&self, n: usize) -> Result<()> {
        if n == 0 || n > MAX_DATA_PIECES {
            bail!("want 1 to {MAX_DATA_PIECES} memslot pieces, got {n}");
        }
        self.set_data_slot(false)?;
        for k in 1..n {
            let slot = EXTRA_SLOT + k as u32 - 1;
            let region = kvm_userspace_memory_region {
                slot,
                ..Default::default()
            };
            // SAFETY: size 0 deletes the slot; no memory is mapped.
            unsafe { self.vm.set_user_memory_region(region) }
                .with_context(|| format!("deleting memslot {slot}"))?;
        }
        Ok(())
    }

    /// Reads KVM's per-VM statistic `name` from debugfs
    /// (`/sys/kernel/debug/kvm/<pid>-<vm fd>/<name>`).
    pub fn debugfs_stat(&self, name: &str) -> Result<u64> {
        let path = format!(
            "/sys/kernel/debug/kvm/{}-{}/{name}",
            std::process::id(),
            self.vm.as_raw_fd()
        );
        crate::sys::read_trimmed(&path)?
            .parse()
            .with_context(|| format!("parsing {path}"))
    }

    /// Has vCPU `idx` run a nested (L2) guest once, with AMD nested paging:
    /// L1 executes `VMRUN` on a VMCB that the host builds in the first
    /// [`NESTED_RESERVED_PAGES`] pages of data memory, L2 reads one page,
    /// writes another and leaves with `VMMCALL`. The host KVM shadows L1's
    /// nested page table for that, so afterwards the VM has shadow pages
    /// (rmaps) besides its TDP MMU mappings, for as long as it lives.
    ///
    /// L1 runs in long mode like every program; L2 runs in 32-bit
    /// protected mode with paging off, on a nested page table that maps its
    /// 4 GiB to L1's first 4 GiB ([`MAX_DATA_SVM`]). Keeping L2 32-bit
    /// keeps it free of page tables of its own, which would have to live in
    /// data memory, the only memory L2 reaches.
    ///
    /// The VM must come from [`TouchVm::new_with_svm`]. Overwrites the
    /// reserved pages; returns the `VMMCALL` exit's L2 RIP.
    pub fn run_nested_once(&mut self, idx: usize, marker: u32) -> Result<u64> {
        self.prepare_nested(L2_PROGRAM)?;
        self.mem
            .write_at(NESTED_L2_SRC as usize, &marker.to_le_bytes())?;
        self.run_nested(idx, kvm_regs::default())?;
        let copied = self.mem.read_u32_at(NESTED_L2_DST as usize)?;
        if copied != marker {
            bail!("L2 copied {copied:#x}, expected the marker {marker:#x}");
        }
        Ok(u64::from(
            self.mem.read_u32_at(NESTED_VMCB as usize + 0x400 + 0x178)?,
        ))
    }

    /// Has vCPU `idx` run a nested (L2) guest that reads `count` pages,
    /// every `stride`-th page of data memory from page `first`, through
    /// L1's nested page table (an identity map of L2's 4 GiB in 2 MiB
    /// pages). KVM shadows that table, so each page L2 reads is mapped by a
    /// shadow SPTE and has an rmap entry besides its TDP MMU SPTE, and its
    /// accessed state from then on is in the shadow SPTE only: L2's reads
    /// set no Accessed bit in the TDP MMU or the host page table.
    ///
    /// Like [`TouchVm::run_nested_once`], for a VM from
    /// [`TouchVm::new_with_svm`]; overwrites the reserved pages (which L2
    /// may read too).
    pub fn run_nested_read(
        &mut self,
        idx: usize,
        first: usize,
        count: usize,
        stride: usize,
    ) -> Result<()> {
        let pages = self.mem.pages();
        if count == 0 || stride == 0 || first + (count - 1) * stride >= pages {
            bail!("bad nested read: pages {first}+{count}x{stride} of {pages}");
        }
        let end = self.data_gpa + ((first + (count - 1) * stride + 1) * PAGE_SIZE) as u64;
        if end > MAX_DATA_SVM as u64 {
            bail!("nested read up to {end:#x}: L2 (32-bit) addresses only {MAX_DATA_SVM:#x}");
        }
        self.prepare_nested(L2_READ_LOOP)?;
        let regs = kvm_regs {
            rsi: self.data_gpa + (first * PAGE_SIZE) as u64,
            rdi: (stride * PAGE_SIZE) as u64,
            rcx: count as u64,
            ..Default::default()
        };
        let after = self.run_nested(idx, regs)?;
        if after.rcx != 0 {
            bail!(
                "L2 left its read loop with {} of {count} pages to go",
                after.rcx
            );
        }
        Ok(())
    }

    /// Zeroes the reserved pages it uses, then writes L2's program, the
    /// VMCB and the nested page table.
    fn prepare_nested(&mut self, l2_program: &[Insn]) -> Result<()> {
        let mem = &mut self.mem;
        for page in 1..NESTED_PAGES_END {
            mem.write_at(page * PAGE_SIZE, &[0u8; PAGE_SIZE])?;
        }
        mem.write_at(NESTED_L2_CODE as usize, &assemble(l2_program))?;
        mem.write_at(NESTED_VMCB as usize, &vmcb12())?;
        mem.write_at(
            NESTED_NPT as usize,
            &identity_map(NESTED_NPT, NESTED_NPT_GIB, true),
        )
    }

    /// Runs L1's `VMRUN` program on vCPU `idx` with `regs`' rsi, rdi and
    /// rcx, which L2 inherits; checks that L2 left through `VMMCALL` and
    /// returns L1's registers afterwards.
    fn run_nested(&mut self, idx: usize, regs: kvm_regs) -> Result<kvm_regs> {
        let vcpu = self.vcpus.get_mut(idx).context("no such vCPU")?;
        let regs = kvm_regs {
            rip: CODE_GPA + VMRUN_ONCE.off,
            rflags: 0x2,
            ..regs
        };
        vcpu.set_regs(&regs).context("KVM_SET_REGS")?;
        run_until_done(vcpu)?;
        let after = vcpu.get_regs().context("KVM_GET_REGS")?;
        let mem = &self.mem;
        let vmcb = NESTED_VMCB as usize;
        let code = u64::from(mem.read_u32_at(vmcb + 0x70)?)
            | u64::from(mem.read_u32_at(vmcb + 0x74)?) << 32;
        if code != SVM_EXIT_VMMCALL {
            bail!(
                "nested guest exited with code {code:#x} (info1 {:#x}, info2 {:#x}), \
                 expected VMMCALL ({SVM_EXIT_VMMCALL:#x})",
                mem.read_u32_at(vmcb + 0x78)?,
                mem.read_u32_at(vmcb + 0x80)?
            );
        }
        Ok(after)
    }

    /// Number of vCPUs.
    pub fn nr_vcpus(&self) -> usize {
        self.vcpus.len()
    }

    /// Has vCPU `idx` access `count` pages, every `stride`-th page starting
    /// at page `first`, and waits for it to finish.
    pub fn touch(
        &mut self,
        idx: usize,
        first: usize,
        count: usize,
        stride: usize,
        access: Access,
    ) -> Result<()> {
        let (pages, base) = (self.mem.pages(), self.data_gpa);
        let vcpu = self.vcpus.get_mut(idx).context("no such vCPU")?;
        run_touch(vcpu, base, pages, first, count, stride, access)
    }

    /// The guest's TSC frequency in kHz (`KVM_GET_TSC_KHZ`), to convert the
    /// cycles of [`TouchVm::timed_write_with`].
    pub fn tsc_khz(&self) -> Result<u32> {
        self.vcpus[0].get_tsc_khz().context("KVM_GET_TSC_KHZ")
    }

    /// Like [`TouchVm::touch_with`] with writes (of the loop's remaining
    /// count, never 0), but the guest times each page's write with `rdtsc`
    /// (a fault it takes included) and logs it; returns the cycles per page,
    /// in page order.
    pub fn timed_write_with(&mut self, n: usize, first: usize, count: usize) -> Result<Vec<u32>> {
        if n == 0 || n > self.vcpus.len() || count == 0 || first + count > self.mem.pages() {
            bail!("bad timed write: {n} vCPUs, pages {first}+{count}");
        }
        let base = self.data_gpa;
        self.split_over_vcpus(n, first, count, |vcpu, lo, hi| {
            let regs = kvm_regs {
                rip: CODE_GPA + TIMED_WRITE_LOOP.off,
                rflags: 0x2,
                rsi: base + (lo * PAGE_SIZE) as u64,
                rdi: PAGE_SIZE as u64,
                rcx: (hi - lo) as u64,
                rbx: LOG_GPA + 4 * lo as u64,
                ..Default::default()
            };
            vcpu.set_regs(&regs).context("KVM_SET_REGS")?;
            run_until_done(vcpu)
        })?;
        (first..first + count)
            .map(|i| self.log.read_u32_at(4 * i))
            .collect()
    }

    /// Splits pages `first..first+count` evenly over the first `n` vCPUs and
    /// runs `f(vcpu, lo, hi)` for each non-empty share `lo..hi` concurrently,
    /// one thread per vCPU; the first error (or panic) is returned.
    fn split_over_vcpus(
        &mut self,
        n: usize,
        first: usize,
        count: usize,
        f: impl Fn(&mut VcpuFd, usize, usize) -> Result<()> + Sync,
    ) -> Result<()> {
        let f = &f;
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .vcpus
                .iter_mut()
                .take(n)
                .enumerate()
                .map(|(i, vcpu)| {
                    let lo = first + count * i / n;
                    let hi = first + count * (i + 1) / n;
                    s.spawn(move || if hi > lo { f(vcpu, lo, hi) } else { Ok(()) })
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("vCPU thread panicked"))?
            })
        })
    }

    /// Splits pages `first..first+count` evenly over all vCPUs and has them
    /// access their share concurrently (one thread per vCPU).
    pub fn touch_all(&mut self, first: usize, count: usize, access: Access) -> Result<()> {
        let n = self.vcpus.len();
        self.touch_with(n, first, count, access)
    }

    /// Like [`TouchVm::touch_all`], with only the first `n` vCPUs.
    pub fn touch_with(
        &mut self,
        n: usize,
        first: usize,
        count: usize,
        access: Access,
    ) -> Result<()> {
        if n == 0 || n > self.vcpus.len() {
            bail!("{n} of {} vCPUs requested", self.vcpus.len());
        }
        let (pages, base) = (self.mem.pages(), self.data_gpa);
        self.split_over_vcpus(n, first, count, |vcpu, lo, hi| {
            // A pattern continues across the shares.
            let access = match access {
                Access::Pattern(seed) => Access::Pattern(seed.wrapping_add((lo - first) as u32)),
                a => a,
            };
            run_touch(vcpu, base, pages, lo, hi - lo, 1, access)
        })
    }
}

fn run_touch(
    vcpu: &mut VcpuFd,
    base: u64,
    pages: usize,
    first: usize,
    count: usize,
    stride: usize,
    access: Access,
) -> Result<()> {
    if count == 0 || stride == 0 {
        bail!("empty touch request");
    }
    let last = first + (count - 1) * stride;
    if last >= pages {
        bail!("touch of page {last} beyond guest memory ({pages} pages)");
    }
    let (off, value) = match access {
        Access::Write(v) => (WRITE_LOOP.off, v),
        Access::Read => (READ_LOOP.off, 0),
        Access::Pattern(seed) => (PATTERN_WRITE_LOOP.off, seed),
    };
    let regs = kvm_regs {
        rip: CODE_GPA + off,
        rflags: 0x2,
        rsi: base + (first * PAGE_SIZE) as u64,
        rdi: (stride * PAGE_SIZE) as u64,
        rcx: count as u64,
        rax: value as u64,
        rdx: value as u64,
        ..Default::default()
    };
    vcpu.set_regs(&regs).context("KVM_SET_REGS")?;
    run_until_done(vcpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_above_the_limits_are_rejected_before_kvm_is_opened() {
        let e = TouchVm::new(MAX_DATA + PAGE_SIZE, 1, Backing::Anon4k).err();
        let e = format!("{:#}", e.expect("above MAX_DATA"));
        assert!(
            e.contains("exceeds the 16 GiB the guest can address"),
            "{e}"
        );
        let e = TouchVm::new_with_svm(MAX_DATA_SVM + PAGE_SIZE, 1, Backing::Anon4k).err();
        let e = format!("{:#}", e.expect("above MAX_DATA_SVM"));
        assert!(
            e.contains("exceeds the 4 GiB a VM with a nested guest"),
            "{e}"
        );
    }
}
