// SPDX-License-Identifier: GPL-2.0
//! A minimal KVM guest for aging tests, on kvm-ioctls/kvm-bindings.
//!
//! The guest runs in 32-bit protected mode with paging off, so a guest
//! physical address is the address its code uses and every guest access to
//! data memory goes through exactly one translation: the host's TDP (NPT)
//! page table.  Its only program walks a range of pages, reading or writing
//! one dword per page, then leaves through an `out` to [`DONE_PORT`].
//!
//! Data memory is memslot 0 at guest physical address 0; the code lives in
//! its own small memslot at [`CODE_GPA`] so it never pollutes the data.

use anyhow::{bail, Context, Result};
use kvm_bindings::{
    kvm_msr_entry, kvm_regs, kvm_segment, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Guest page size the program strides by.
pub const PAGE_SIZE: usize = 4096;
/// Guest physical address of the code memslot.
pub const CODE_GPA: u64 = 0xc000_0000;
/// I/O port the guest writes to when it finished a pass.
pub const DONE_PORT: u16 = 0x10;
/// Largest data memory the 32-bit guest can address below [`CODE_GPA`].
pub const MAX_DATA: usize = CODE_GPA as usize;

const DATA_SLOT: u32 = 0;
const CODE_SLOT: u32 = 1;
/// First memslot id of the data pieces after the first ([`TouchVm::set_data_slots`]).
const EXTRA_SLOT: u32 = 2;
/// Most data memslots [`TouchVm::set_data_slots`] creates.
pub const MAX_DATA_PIECES: usize = 8;

// mov [esi], eax | add esi, edi | dec ecx | jnz -7 | out 0x10, al | hlt
const WRITE_LOOP: [u8; 10] = [0x89, 0x06, 0x01, 0xfe, 0x49, 0x75, 0xf9, 0xe6, 0x10, 0xf4];
// mov eax, [esi] | add esi, edi | dec ecx | jnz -7 | out 0x10, al | hlt
const READ_LOOP: [u8; 10] = [0x8b, 0x06, 0x01, 0xfe, 0x49, 0x75, 0xf9, 0xe6, 0x10, 0xf4];
const WRITE_OFF: u64 = 0;
const READ_OFF: u64 = 0x10;
// mov eax, NESTED_VMCB | vmrun | out 0x10, al | hlt
const VMRUN_ONCE: [u8; 11] = [
    0xb8, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x01, 0xd8, 0xe6, 0x10, 0xf4,
];
const VMRUN_OFF: u64 = 0x20;
// loop: rdtsc | mov ebp, eax | mov [esi], ecx | rdtsc | sub eax, ebp |
//       mov [ebx], eax | add ebx, 4 | add esi, edi | dec ecx | jnz loop |
//       out 0x10, al | hlt
// Writes each page and logs the TSC cycles the write took (a fault
// included) as one u32 per page at ebx.
const TIMED_WRITE_LOOP: [u8; 23] = [
    0x0f, 0x31, 0x89, 0xc5, 0x89, 0x0e, 0x0f, 0x31, 0x29, 0xe8, 0x89, 0x03, 0x83, 0xc3, 0x04, 0x01,
    0xfe, 0x49, 0x75, 0xec, 0xe6, 0x10, 0xf4,
];
const TIMED_OFF: u64 = 0x40;
// loop: mov [esi], edx | add esi, edi | inc edx | dec ecx | jnz loop |
//       out 0x10, al | hlt
// Writes a pattern: page i of the range gets edx + i.
const PATTERN_WRITE_LOOP: [u8; 11] = [
    0x89, 0x16, 0x01, 0xfe, 0x42, 0x49, 0x75, 0xf8, 0xe6, 0x10, 0xf4,
];
const PATTERN_WRITE_OFF: u64 = 0x60;
// loop: mov eax, [esi] | cmp eax, edx | jne bad | add esi, edi | inc edx |
//       dec ecx | jnz loop | out 0x10, al | hlt
// bad:  out 0x11, al | hlt
// Checks the pattern; on the first mismatch it leaves through BAD_PORT with
// esi at the page, eax what it read and edx what it expected.
const PATTERN_VERIFY_LOOP: [u8; 18] = [
    0x8b, 0x06, 0x39, 0xd0, 0x75, 0x09, 0x01, 0xfe, 0x42, 0x49, 0x75, 0xf4, 0xe6, 0x10, 0xf4, 0xe6,
    0x11, 0xf4,
];
const PATTERN_VERIFY_OFF: u64 = 0x80;
/// I/O port of a pattern mismatch ([`TouchVm::verify_pattern_with`]).
pub const BAD_PORT: u16 = 0x11;
/// Guest physical address of the latency log memslot (one u32 per data
/// page), above the code.
const LOG_GPA: u64 = CODE_GPA + (16 << 20);
const LOG_SLOT: u32 = 16;

/// Pages at the start of data memory that [`TouchVm::run_nested_once`]
/// uses for the VMCB, the host save area, L1's nested page table, L2, and
/// L1's own page directory.
pub const NESTED_RESERVED_PAGES: usize = 16;
const NESTED_VMCB: u64 = 0x1000;
const NESTED_HSAVE: u64 = 0x2000;
const NESTED_NPT_PD: u64 = 0x3000;
const NESTED_NPT_PT: u64 = 0x4000;
const NESTED_L2_CODE: u64 = 0x5000;
const NESTED_L2_SRC: u64 = 0x6000;
const NESTED_L2_DST: u64 = 0x7000;
const NESTED_L2_STACK: u64 = 0x8000;
const NESTED_L1_PD: u64 = 0x9000;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const EFER_SVME: u64 = 1 << 12;
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;
const SVM_EXIT_VMMCALL: u64 = 0x81;
// L2: mov eax, [0x6000] | mov [0x7000], eax | vmmcall | hlt
const L2_PROGRAM: [u8; 14] = [
    0xa1, 0x00, 0x60, 0x00, 0x00, 0xa3, 0x00, 0x70, 0x00, 0x00, 0x0f, 0x01, 0xd9, 0xf4,
];
// L2: mov eax, [esi] | add esi, edi | dec ecx | jnz -7 | vmmcall | hlt
// L1's esi, edi and ecx reach L2 unchanged (VMRUN loads only rax, rsp and
// rip from the VMCB), so L1 sets them like for READ_LOOP.
const L2_READ_LOOP: [u8; 11] = [
    0x8b, 0x06, 0x01, 0xfe, 0x49, 0x75, 0xf9, 0x0f, 0x01, 0xd9, 0xf4,
];

/// A VMCB (AMD APM vol. 2, appendix B) for L2: 32-bit protected mode with
/// paging off, flat segments, nested paging on with [`NESTED_NPT_PD`] as
/// nested CR3, intercepting `VMRUN` (required), `VMMCALL`, `HLT` and
/// shutdown, so that whatever L2 does ends in an exit to L1.
fn vmcb12() -> Vec<u8> {
    let mut v = vec![0u8; PAGE_SIZE];
    let mut put = |off: usize, bytes: &[u8]| v[off..off + bytes.len()].copy_from_slice(bytes);
    // Control area.
    put(0x0c, &((1u32 << 24) | (1u32 << 31)).to_le_bytes()); // HLT, SHUTDOWN
    put(0x10, &3u32.to_le_bytes()); // VMRUN, VMMCALL
    put(0x58, &1u32.to_le_bytes()); // ASID
    put(0x90, &1u64.to_le_bytes()); // nested_ctl: NP_ENABLE
    put(0xb0, &NESTED_NPT_PD.to_le_bytes()); // nested CR3
                                             // State save area at 0x400: segments {selector, attrib, limit, base}.
    let seg = |sel: u16, attrib: u16, limit: u32| {
        let mut s = Vec::with_capacity(16);
        s.extend_from_slice(&sel.to_le_bytes());
        s.extend_from_slice(&attrib.to_le_bytes());
        s.extend_from_slice(&limit.to_le_bytes());
        s.extend_from_slice(&0u64.to_le_bytes());
        s
    };
    let data = seg(0x10, 0xc93, 0xffff_ffff);
    for off in [0x400, 0x420, 0x430, 0x440, 0x450] {
        put(off, &data); // es, ss, ds, fs, gs
    }
    put(0x410, &seg(0x08, 0xc9b, 0xffff_ffff)); // cs
    put(0x490, &seg(0x18, 0x08b, 0x67)); // tr
    put(0x4d0, &EFER_SVME.to_le_bytes()); // efer
    put(0x558, &0x11u64.to_le_bytes()); // cr0: PE, ET
    put(0x560, &0x400u64.to_le_bytes()); // dr7
    put(0x568, &0xffff_0ff0u64.to_le_bytes()); // dr6
    put(0x570, &2u64.to_le_bytes()); // rflags
    put(0x578, &NESTED_L2_CODE.to_le_bytes()); // rip
    put(0x5d8, &NESTED_L2_STACK.to_le_bytes()); // rsp
    put(0x668, &0x0007_0406_0007_0406u64.to_le_bytes()); // g_pat
    v
}

/// A 32-bit page directory of 1024 4 MiB pages mapping all of the 32-bit
/// physical space to itself, each entry with `flags` (PS, 0x80, included).
fn identity_pd_4m(flags: u32) -> Vec<u8> {
    (0..1024u32)
        .flat_map(|i| ((i << 22) | flags).to_le_bytes())
        .collect()
}

/// How the data memory is backed on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous memory, 4 KiB pages (`MADV_NOHUGEPAGE`).
    Anon4k,
    /// Anonymous memory with transparent huge pages (`MADV_HUGEPAGE`).
    Thp,
}

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

/// An anonymous host mapping, unmapped when dropped.
///
/// Invariant: `ptr..ptr+len` is a private anonymous mapping owned by `self`.
pub struct HostMem {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by `HostMem`, not tied to the
// thread that made it.
unsafe impl Send for HostMem {}
// SAFETY: through `&HostMem` the host only reads the memory (volatile dword
// reads, `read_u32_at`) or hands out the address (for the guest, madvise,
// pagemap and devices, which the kernel mediates); host writes (`write_at`,
// `fill`) need `&mut HostMem`, so no two Rust threads race on the memory.
unsafe impl Sync for HostMem {}

impl HostMem {
    /// Maps `len` bytes (rounded up to 2 MiB alignment for THP).
    pub fn new(len: usize, backing: Backing) -> Result<Self> {
        const HUGE: usize = 2 << 20;
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            bail!("memory size {len} is not a positive multiple of {PAGE_SIZE}");
        }
        // Over-allocate so the THP case can be 2 MiB aligned.
        let map_len = len + HUGE;
        // SAFETY: anonymous private mapping with no address hint; the result
        // is checked against MAP_FAILED below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap guest memory");
        }
        let start = raw as usize;
        let aligned = (start + HUGE - 1) & !(HUGE - 1);
        // SAFETY: both ranges lie inside the mapping just created and are
        // not used afterwards.
        unsafe {
            if aligned > start {
                libc::munmap(raw, aligned - start);
            }
            let tail = start + map_len - (aligned + len);
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
        }
        let mem = Self {
            ptr: aligned as *mut u8,
            len,
        };
        let advice = match backing {
            Backing::Anon4k => libc::MADV_NOHUGEPAGE,
            Backing::Thp => libc::MADV_HUGEPAGE,
        };
        // SAFETY: the range is our own mapping.
        if unsafe { libc::madvise(mem.ptr.cast(), len, advice) } != 0 {
            return Err(std::io::Error::last_os_error()).context("madvise guest memory");
        }
        Ok(mem)
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    /// First dword of page `i`, read from the host side.
    pub fn read_page_u32(&self, i: usize) -> u32 {
        assert!(i < self.pages());
        self.read_u32_at(i * PAGE_SIZE)
            .expect("page start is in bounds and aligned")
    }

    /// Drops pages `first..first+count` (`MADV_DONTNEED`): the host page
    /// table entries go away, which invalidates the secondary MMU's
    /// mappings, and the next access faults in a fresh zero page.
    pub fn discard(&self, first: usize, count: usize) -> Result<()> {
        if first + count > self.pages() {
            bail!(
                "discard of pages {first}..{} beyond {}",
                first + count,
                self.pages()
            );
        }
        // SAFETY: the range lies inside our own mapping (checked above);
        // nothing holds Rust references into it.
        let r = unsafe {
            libc::madvise(
                self.ptr.add(first * PAGE_SIZE).cast(),
                count * PAGE_SIZE,
                libc::MADV_DONTNEED,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error()).context("madvise(MADV_DONTNEED)");
        }
        Ok(())
    }

    /// Writes `bytes` at byte `offset` from the host side (a plain copy:
    /// `&mut self`, so no other thread of this process accesses the memory
    /// meanwhile).
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        if offset
            .checked_add(bytes.len())
            .is_none_or(|end| end > self.len)
        {
            bail!(
                "write of {} bytes at {offset:#x} beyond {:#x}",
                bytes.len(),
                self.len
            );
        }
        // SAFETY: in bounds (checked above) of our own mapping; nothing holds
        // Rust references into it and `&mut self` excludes the other host
        // accessors for the duration of the copy.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset), bytes.len()) };
        Ok(())
    }

    /// Reads the `u32` at byte `offset` (4-byte aligned) from the host side.
    pub fn read_u32_at(&self, offset: usize) -> Result<u32> {
        if !offset.is_multiple_of(4) || offset + 4 > self.len {
            bail!(
                "read of u32 at {offset:#x} unaligned or beyond {:#x}",
                self.len
            );
        }
        // SAFETY: in bounds and aligned (checked above); volatile because the
        // guest writes it behind our back.
        Ok(unsafe { std::ptr::read_volatile(self.ptr.add(offset).cast::<u32>()) })
    }

    /// Writes the first dword of every page from the host side (faults the
    /// whole range in through the host page table). `&mut self`, like
    /// [`HostMem::write_at`]: host writes never race each other.
    pub fn fill(&mut self, value: u32) {
        for i in 0..self.pages() {
            // SAFETY: as in `read_page_u32`.
            unsafe { std::ptr::write_volatile(self.ptr.add(i * PAGE_SIZE).cast::<u32>(), value) }
        }
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the range this object owns.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
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

fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl TouchVm {
    /// Creates a VM with `mem_bytes` of data memory and `nr_vcpus` vCPUs.
    pub fn new(mem_bytes: usize, nr_vcpus: usize, backing: Backing) -> Result<Self> {
        Self::build(mem_bytes, nr_vcpus, backing, false)
    }

    /// Like [`TouchVm::new`], with AMD SVM exposed to the guest (CPUID from
    /// `KVM_GET_SUPPORTED_CPUID`, `EFER.SVME` set, `VM_HSAVE_PA` pointing
    /// into the reserved pages), so that [`TouchVm::run_nested_once`] can run
    /// a nested guest. Fails if KVM does not offer nested SVM.
    pub fn new_with_svm(mem_bytes: usize, nr_vcpus: usize, backing: Backing) -> Result<Self> {
        if mem_bytes < NESTED_RESERVED_PAGES * PAGE_SIZE {
            bail!("a nested guest needs at least {NESTED_RESERVED_PAGES} pages");
        }
        Self::build(mem_bytes, nr_vcpus, backing, true)
    }

    fn build(mem_bytes: usize, nr_vcpus: usize, backing: Backing, svm: bool) -> Result<Self> {
        if mem_bytes > MAX_DATA {
            bail!("guest memory {mem_bytes} exceeds {MAX_DATA}");
        }
        if nr_vcpus == 0 {
            bail!("need at least one vCPU");
        }
        let kvm = Kvm::new().context("opening /dev/kvm")?;
        let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
        let mem = HostMem::new(mem_bytes, backing)?;
        let code = HostMem::new(PAGE_SIZE, Backing::Anon4k)?;
        // SAFETY: `code` is a fresh mapping of PAGE_SIZE bytes; the two
        // programs fit (checked by the constants' sizes) at their offsets.
        unsafe {
            std::ptr::copy_nonoverlapping(
                WRITE_LOOP.as_ptr(),
                code.as_ptr().add(WRITE_OFF as usize),
                WRITE_LOOP.len(),
            );
            std::ptr::copy_nonoverlapping(
                READ_LOOP.as_ptr(),
                code.as_ptr().add(READ_OFF as usize),
                READ_LOOP.len(),
            );
            std::ptr::copy_nonoverlapping(
                VMRUN_ONCE.as_ptr(),
                code.as_ptr().add(VMRUN_OFF as usize),
                VMRUN_ONCE.len(),
            );
            std::ptr::copy_nonoverlapping(
                TIMED_WRITE_LOOP.as_ptr(),
                code.as_ptr().add(TIMED_OFF as usize),
                TIMED_WRITE_LOOP.len(),
            );
            std::ptr::copy_nonoverlapping(
                PATTERN_WRITE_LOOP.as_ptr(),
                code.as_ptr().add(PATTERN_WRITE_OFF as usize),
                PATTERN_WRITE_LOOP.len(),
            );
            std::ptr::copy_nonoverlapping(
                PATTERN_VERIFY_LOOP.as_ptr(),
                code.as_ptr().add(PATTERN_VERIFY_OFF as usize),
                PATTERN_VERIFY_LOOP.len(),
            );
        }
        let cpuid = if svm {
            let c = kvm
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .context("KVM_GET_SUPPORTED_CPUID")?;
            let has_svm = c
                .as_slice()
                .iter()
                .any(|e| e.function == 0x8000_0001 && e.ecx & (1 << 2) != 0);
            if !has_svm {
                bail!("KVM does not offer SVM to guests (kvm_amd.nested=0 or not AMD)");
            }
            Some(c)
        } else {
            None
        };
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
            // SAFETY: the host memory outlives the VM: both `HostMem`s are
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
            let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
            sregs.cs = flat_segment(0x8, 0xb);
            for s in [
                &mut sregs.ds,
                &mut sregs.es,
                &mut sregs.fs,
                &mut sregs.gs,
                &mut sregs.ss,
            ] {
                *s = flat_segment(0x10, 0x3);
            }
            sregs.cr0 = (sregs.cr0 | 1) & !(1 << 31); // PE on, PG off
            sregs.efer = 0;
            if let Some(c) = &cpuid {
                vcpu.set_cpuid2(c).context("KVM_SET_CPUID2")?;
                sregs.efer = EFER_SVME;
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
            vcpu.set_sregs(&sregs).context("KVM_SET_SREGS")?;
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
                rip: CODE_GPA + PATTERN_VERIFY_OFF,
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
    /// KVM requires paging for SVM instructions, so L1 runs this with a
    /// 4 MiB-page identity map (`CR4.PSE`), and its registers are put back
    /// to paging off afterwards.
    ///
    /// The VM must come from [`TouchVm::new_with_svm`]. Overwrites the
    /// reserved pages; returns the `VMMCALL` exit's L2 RIP.
    pub fn run_nested_once(&mut self, idx: usize, marker: u32) -> Result<u64> {
        // L1's nested page table, in 32-bit two-level format (L1 runs with
        // CR4.PAE and EFER.LMA clear): identity map of the first 4 MiB,
        // user + writable + present, as nested walks are user accesses.
        let mut pt = Vec::with_capacity(PAGE_SIZE);
        for i in 0..1024u32 {
            pt.extend_from_slice(&((i << 12) | 7).to_le_bytes());
        }
        self.prepare_nested(&L2_PROGRAM)?;
        let mem = &mut self.mem;
        mem.write_at(
            NESTED_NPT_PD as usize,
            &((NESTED_NPT_PT as u32) | 7).to_le_bytes(),
        )?;
        mem.write_at(NESTED_NPT_PT as usize, &pt)?;
        mem.write_at(NESTED_L2_SRC as usize, &marker.to_le_bytes())?;
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
    /// L1's nested page table (an identity map of all data memory in 4 MiB
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
        self.prepare_nested(&L2_READ_LOOP)?;
        // User (nested walks are user accesses) on top of present, writable
        // and PS.
        self.mem
            .write_at(NESTED_NPT_PD as usize, &identity_pd_4m(0x87))?;
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

    /// Zeroes the reserved pages, then writes L1's own page directory
    /// (1024 present, writable 4 MiB pages), L2's program and the VMCB;
    /// the caller writes the nested page table.
    fn prepare_nested(&mut self, l2_program: &[u8]) -> Result<()> {
        let mem = &mut self.mem;
        for page in 1..10 {
            mem.write_at(page * PAGE_SIZE, &[0u8; PAGE_SIZE])?;
        }
        mem.write_at(NESTED_L1_PD as usize, &identity_pd_4m(0x83))?;
        mem.write_at(NESTED_L2_CODE as usize, l2_program)?;
        mem.write_at(NESTED_VMCB as usize, &vmcb12())
    }

    /// Runs L1's `VMRUN` program on vCPU `idx` with paging on (see
    /// [`TouchVm::run_nested_once`]) and `regs`' rsi, rdi and rcx, which
    /// L2 inherits; checks that L2 left through `VMMCALL` and returns L1's
    /// registers afterwards.
    fn run_nested(&mut self, idx: usize, regs: kvm_regs) -> Result<kvm_regs> {
        let vcpu = self.vcpus.get_mut(idx).context("no such vCPU")?;
        let flat = vcpu.get_sregs().context("KVM_GET_SREGS")?;
        let mut paged = flat;
        paged.cr3 = NESTED_L1_PD;
        paged.cr4 |= CR4_PSE;
        paged.cr0 |= CR0_PG;
        vcpu.set_sregs(&paged)
            .context("KVM_SET_SREGS (paging on)")?;
        let regs = kvm_regs {
            rip: CODE_GPA + VMRUN_OFF,
            rflags: 0x2,
            ..regs
        };
        vcpu.set_regs(&regs).context("KVM_SET_REGS")?;
        let run = run_until_done(vcpu);
        vcpu.set_sregs(&flat)
            .context("KVM_SET_SREGS (paging off)")?;
        run?;
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
                rip: CODE_GPA + TIMED_OFF,
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
        Access::Write(v) => (WRITE_OFF, v),
        Access::Read => (READ_OFF, 0),
        Access::Pattern(seed) => (PATTERN_WRITE_OFF, seed),
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

/// The guest's registers, for an error message: where its program was
/// (`rip`), how far its loop got (`ecx` pages left, `esi` the page
/// address, `edx` the pattern value) and what it read (`eax`).
fn reg_dump(vcpu: &VcpuFd) -> String {
    match vcpu.get_regs() {
        Ok(r) => format!(
            "rip {:#x} eax {:#x} ecx {:#x} edx {:#x} esi {:#x} edi {:#x} ebx {:#x} rflags {:#x}",
            r.rip, r.rax, r.rcx, r.rdx, r.rsi, r.rdi, r.rbx, r.rflags
        ),
        Err(e) => format!("registers unreadable: {e}"),
    }
}

/// Longest one guest program may run, in milliseconds (0: no limit); see
/// [`set_run_limit`].
static RUN_LIMIT_MS: AtomicU64 = AtomicU64::new(0);

/// Makes every later guest run of this process fail, with the guest's
/// registers, once it has run for `limit` without finishing
/// (`Duration::ZERO`: no limit, the default): a vCPU that never leaves its
/// program (a guest livelock) is reported with where it is instead of
/// hanging its process.  It cannot catch a vCPU thread stuck in the kernel
/// itself, outside `KVM_RUN`'s signal checks.
pub fn set_run_limit(limit: Duration) {
    let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    RUN_LIMIT_MS.store(ms, Ordering::Relaxed);
}

/// CPU mask the threads that run guest programs are pinned to while they
/// do (0: none); see [`set_vcpu_cpus`].
static VCPU_CPUS: AtomicU64 = AtomicU64::new(0);

/// Runs every later guest program of this process only on `cpus` (CPU
/// numbers below 64 that this process may use): the thread running it is
/// pinned for the run and gets its own CPU mask back afterwards.  An empty
/// list lifts the pinning.
pub fn set_vcpu_cpus(cpus: &[usize]) -> Result<()> {
    let mut mask = 0u64;
    for &c in cpus {
        check_cpu(c)?;
        mask |= 1 << c;
    }
    VCPU_CPUS.store(mask, Ordering::Relaxed);
    Ok(())
}

/// The CPUs [`set_vcpu_cpus`] set, to pass on to child processes.
pub fn vcpu_cpus() -> Vec<usize> {
    let mask = VCPU_CPUS.load(Ordering::Relaxed);
    (0..64).filter(|c| mask & (1 << c) != 0).collect()
}

fn get_affinity() -> Result<libc::cpu_set_t> {
    // SAFETY: zero is a valid cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the
    // calling thread.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    Ok(set)
}

fn set_affinity(set: &libc::cpu_set_t) -> Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the
    // calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(set), set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
    }
    Ok(())
}

/// The CPUs below 64 the calling thread may run on, in order.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    let set = get_affinity()?;
    // SAFETY: c < 64 < CPU_SETSIZE, inside `set`.
    Ok((0..64)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Fails unless `c` is a CPU below 64 that the calling thread may run on
/// (online and in its cpuset), i.e. one [`set_vcpu_cpus`] can take.
pub fn check_cpu(c: usize) -> Result<()> {
    if c >= 64 {
        bail!("CPU {c} is above 63 (the most this test can pin to)");
    }
    if !allowed_cpus()?.contains(&c) {
        bail!("CPU {c} is not one this process may run on (offline or outside its cpuset)");
    }
    Ok(())
}

/// While alive, pins the calling thread to the [`set_vcpu_cpus`] mask;
/// restores the thread's previous mask on drop.
struct Pin {
    old: libc::cpu_set_t,
}

impl Pin {
    fn new() -> Result<Option<Self>> {
        let cpus = vcpu_cpus();
        if cpus.is_empty() {
            return Ok(None);
        }
        let old = get_affinity()?;
        // SAFETY: zero is a valid cpu_set_t.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for c in cpus {
            // SAFETY: c < 64 < CPU_SETSIZE, inside `set`.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        set_affinity(&set)?;
        Ok(Some(Pin { old }))
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // A thread left pinned only runs slower, but say so (once).
        if let Err(e) = set_affinity(&self.old) {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| eprintln!("kvm: restoring a vCPU thread's CPU mask: {e:#}"));
        }
    }
}

extern "C" fn watchdog_tick(_: libc::c_int) {}

/// Installs [`watchdog_tick`] for `SIGUSR2`, once per process.  With
/// `SA_RESTART`, other system calls interrupted by a tick are restarted;
/// `KVM_RUN` is not (it returns `EINTR`), which is what the watchdog needs.
fn install_tick_handler() -> Result<()> {
    static INSTALL: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    INSTALL
        .get_or_init(|| {
            // SAFETY: the handler does nothing (async-signal-safe); the
            // sigaction struct is zero-initialised plain data, then filled.
            let r = unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = watchdog_tick as extern "C" fn(libc::c_int) as libc::sighandler_t;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut())
            };
            if r != 0 {
                return Err(format!(
                    "sigaction(SIGUSR2): {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(())
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// A periodic `SIGUSR2` to the calling thread, interrupting `KVM_RUN`
/// (`EINTR`) so that [`run_until`] can check its deadline; deleted on drop.
///
/// Invariant: `timer` is a live POSIX timer created by [`Watchdog::arm`].
struct Watchdog {
    timer: libc::timer_t,
}

impl Watchdog {
    /// Arms a watchdog ticking every `tick` for the calling thread.
    fn arm(tick: Duration) -> Result<Self> {
        install_tick_handler()?;
        // SAFETY: zero is a valid bit pattern for sigevent; the fields set
        // ask for SIGUSR2 to this thread (SIGEV_THREAD_ID).
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = libc::SIGUSR2;
        // SAFETY: gettid() has no preconditions.
        sev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `sev` and `timer` are valid for the call.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) } != 0 {
            return Err(std::io::Error::last_os_error()).context("timer_create");
        }
        let w = Watchdog { timer };
        let ts = libc::timespec {
            tv_sec: tick.as_secs() as libc::time_t,
            tv_nsec: tick.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: `w.timer` is live (invariant), `spec` valid.
        if unsafe { libc::timer_settime(w.timer, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error()).context("timer_settime");
        }
        Ok(w)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // SAFETY: `self.timer` is live (invariant) and deleted once.  A
        // tick already queued stays pending after timer_delete(); it is
        // harmless: the handler stays installed (SA_RESTART, so other
        // calls restart) and run_until's loop retries an EINTR'd KVM_RUN.
        unsafe { libc::timer_delete(self.timer) };
    }
}

/// Runs the vCPU until the guest writes to [`DONE_PORT`].
fn run_until_done(vcpu: &mut VcpuFd) -> Result<()> {
    run_until(vcpu, &[]).map(drop)
}

/// Runs the vCPU until the guest writes to [`DONE_PORT`] or one of `also`;
/// returns the port.
fn run_until(vcpu: &mut VcpuFd, also: &[u16]) -> Result<u16> {
    let _pin = Pin::new()?;
    let limit = Duration::from_millis(RUN_LIMIT_MS.load(Ordering::Relaxed));
    let _watchdog = if limit.is_zero() {
        None
    } else {
        Some(Watchdog::arm(
            (limit / 10).clamp(Duration::from_millis(100), Duration::from_secs(5)),
        )?)
    };
    let start = Instant::now();
    loop {
        if !limit.is_zero() && start.elapsed() > limit {
            bail!(
                "the guest program did not finish in {limit:?} ({})",
                reg_dump(vcpu)
            );
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(DONE_PORT, _)) => return Ok(DONE_PORT),
            Ok(VcpuExit::IoOut(port, _)) if also.contains(&port) => return Ok(port),
            Ok(VcpuExit::IoOut(port, _)) => {
                bail!(
                    "guest wrote to unexpected port {port:#x} ({})",
                    reg_dump(vcpu)
                )
            }
            Ok(VcpuExit::Intr) => continue,
            Ok(other) => {
                let what = format!("{other:?}");
                bail!("unexpected vCPU exit {what} ({})", reg_dump(vcpu))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(e).context("KVM_RUN"),
        }
    }
}
