// SPDX-License-Identifier: GPL-2.0
//! What the guest sees: its memory layout, its page tables, its programs
//! and the nested guest's VMCB.
//!
//! Guest physical layout:
//!
//! | address | what |
//! | --- | --- |
//! | `0` .. [`MAX_DATA`] | data memory (the tests may split or move it) |
//! | [`CODE_GPA`] | the programs page (the code memslot starts here) |
//! | [`PAGE_TABLES_GPA`] | the guest's page tables, in the code memslot |
//! | [`LOG_GPA`] | the latency log, one u32 per data page |
//!
//! The page tables map `0 .. IDENTITY_GIB` GiB, which covers all three, to
//! itself.

/// Guest page size the programs stride by.
pub const PAGE_SIZE: usize = 4096;
/// Largest data memory of a guest: what fits below [`CODE_GPA`].
pub const MAX_DATA: usize = 16 << 30;
/// Guest physical address of the code memslot, right above the largest
/// data memory. Far below any x86-64 CPU's smallest physical address width
/// (36 bits, 64 GiB), so any host's KVM accepts it and the page tables.
pub const CODE_GPA: u64 = MAX_DATA as u64;
/// Largest data memory of a VM from [`super::TouchVm::new_with_svm`]: its
/// L2 runs in 32-bit protected mode with paging off
/// ([`super::TouchVm::run_nested_read`]), so it addresses 4 GiB.
pub const MAX_DATA_SVM: usize = 4 << 30;
/// I/O port the guest writes to when it finished a pass.
pub const DONE_PORT: u16 = 0x10;
/// I/O port of a pattern mismatch ([`super::TouchVm::verify_pattern_with`]).
pub const BAD_PORT: u16 = 0x11;

/// GiB the guest's identity map covers: the data, then the code and log
/// above it.
const IDENTITY_GIB: usize = MAX_DATA / (1 << 30) + 1;
/// Guest physical address of the guest's PML4; the PDPT and the page
/// directories follow it page by page ([`identity_map`]).
pub(super) const PAGE_TABLES_GPA: u64 = CODE_GPA + PAGE_SIZE as u64;
/// Size of the code memslot: the programs page and the page tables.
pub(super) const CODE_BYTES: usize = (1 + TABLE_PAGES) * PAGE_SIZE;
const TABLE_PAGES: usize = 2 + IDENTITY_GIB;
/// Guest physical address of the latency log memslot (one u32 per data
/// page), above the code.
pub(super) const LOG_GPA: u64 = CODE_GPA + (16 << 20);

const _: () = assert!(CODE_GPA + CODE_BYTES as u64 <= LOG_GPA);
const _: () = assert!(LOG_GPA + (MAX_DATA / PAGE_SIZE * 4) as u64 <= (IDENTITY_GIB as u64) << 30);

/// One instruction of a guest program: its encoding and its assembly as
/// `objdump -M intel` prints it, jump targets as offsets into the program
/// (a unit test disassembles every program and compares).
pub(super) type Insn = (&'static [u8], &'static str);

/// A 64-bit program and its offset in the programs page. Every program
/// walks `ecx` pages from `rsi`, `rdi` bytes apart, and leaves through an
/// `out` to [`DONE_PORT`]; registers are 64-bit for addresses (data and
/// log reach above 4 GiB) and 32-bit for counts and values.
pub(super) struct Program {
    pub(super) off: u64,
    pub(super) insns: &'static [Insn],
}

/// Writes `eax` into the first dword of each page.
pub(super) const WRITE_LOOP: Program = Program {
    off: 0,
    insns: &[
        (&[0x89, 0x06], "mov DWORD PTR [rsi],eax"),
        (&[0x48, 0x01, 0xfe], "add rsi,rdi"),
        (&[0xff, 0xc9], "dec ecx"),
        (&[0x75, 0xf7], "jne 0x0"),
        (&[0xe6, 0x10], "out 0x10,al"),
        (&[0xf4], "hlt"),
    ],
};
/// Reads the first dword of each page.
pub(super) const READ_LOOP: Program = Program {
    off: 0x10,
    insns: &[
        (&[0x8b, 0x06], "mov eax,DWORD PTR [rsi]"),
        (&[0x48, 0x01, 0xfe], "add rsi,rdi"),
        (&[0xff, 0xc9], "dec ecx"),
        (&[0x75, 0xf7], "jne 0x0"),
        (&[0xe6, 0x10], "out 0x10,al"),
        (&[0xf4], "hlt"),
    ],
};
/// L1's part of a nested run: `VMRUN` on the VMCB at [`NESTED_VMCB`].
pub(super) const VMRUN_ONCE: Program = Program {
    off: 0x20,
    insns: &[
        (&[0xb8, 0x00, 0x10, 0x00, 0x00], "mov eax,0x1000"),
        (&[0x0f, 0x01, 0xd8], "vmrun"),
        (&[0xe6, 0x10], "out 0x10,al"),
        (&[0xf4], "hlt"),
    ],
};
const _: () = assert!(NESTED_VMCB == 0x1000);
/// Writes `ecx` (the pages left) into each page and logs the TSC cycles
/// the write took (a fault included) as one u32 per page at `rbx`.
pub(super) const TIMED_WRITE_LOOP: Program = Program {
    off: 0x40,
    insns: &[
        (&[0x0f, 0x31], "rdtsc"),
        (&[0x89, 0xc5], "mov ebp,eax"),
        (&[0x89, 0x0e], "mov DWORD PTR [rsi],ecx"),
        (&[0x0f, 0x31], "rdtsc"),
        (&[0x29, 0xe8], "sub eax,ebp"),
        (&[0x89, 0x03], "mov DWORD PTR [rbx],eax"),
        (&[0x48, 0x83, 0xc3, 0x04], "add rbx,0x4"),
        (&[0x48, 0x01, 0xfe], "add rsi,rdi"),
        (&[0xff, 0xc9], "dec ecx"),
        (&[0x75, 0xe9], "jne 0x0"),
        (&[0xe6, 0x10], "out 0x10,al"),
        (&[0xf4], "hlt"),
    ],
};
/// Writes a pattern: page i of the range gets `edx + i`.
pub(super) const PATTERN_WRITE_LOOP: Program = Program {
    off: 0x60,
    insns: &[
        (&[0x89, 0x16], "mov DWORD PTR [rsi],edx"),
        (&[0x48, 0x01, 0xfe], "add rsi,rdi"),
        (&[0xff, 0xc2], "inc edx"),
        (&[0xff, 0xc9], "dec ecx"),
        (&[0x75, 0xf5], "jne 0x0"),
        (&[0xe6, 0x10], "out 0x10,al"),
        (&[0xf4], "hlt"),
    ],
};
/// Checks the pattern; on the first mismatch it leaves through
/// [`BAD_PORT`] with `rsi` at the page, `eax` what it read and `edx` what
/// it expected.
pub(super) const PATTERN_VERIFY_LOOP: Program = Program {
    off: 0x80,
    insns: &[
        (&[0x8b, 0x06], "mov eax,DWORD PTR [rsi]"),
        (&[0x39, 0xd0], "cmp eax,edx"),
        (&[0x75, 0x0c], "jne 0x12"),
        (&[0x48, 0x01, 0xfe], "add rsi,rdi"),
        (&[0xff, 0xc2], "inc edx"),
        (&[0xff, 0xc9], "dec ecx"),
        (&[0x75, 0xf1], "jne 0x0"),
        (&[0xe6, 0x10], "out 0x10,al"),
        (&[0xf4], "hlt"),
        // 0x12: the mismatch.
        (&[0xe6, 0x11], "out 0x11,al"),
        (&[0xf4], "hlt"),
    ],
};
const PROGRAMS: [&Program; 6] = [
    &WRITE_LOOP,
    &READ_LOOP,
    &VMRUN_ONCE,
    &TIMED_WRITE_LOOP,
    &PATTERN_WRITE_LOOP,
    &PATTERN_VERIFY_LOOP,
];

/// The bytes of `insns`, in order.
pub(super) fn assemble(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(|(b, _)| b.iter().copied()).collect()
}

/// The programs page: every [`Program`] at its offset.
pub(super) fn programs_page() -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    let mut end = 0;
    let mut sorted = PROGRAMS;
    sorted.sort_by_key(|p| p.off);
    for p in sorted {
        let code = assemble(p.insns);
        let off = p.off as usize;
        assert!(
            off >= end,
            "guest program at {off:#x} overlaps the previous"
        );
        end = off + code.len();
        page[off..end].copy_from_slice(&code);
    }
    page
}

/// Page table entry bits (AMD APM vol. 2, 5.3).
const PTE_P: u64 = 1;
const PTE_W: u64 = 1 << 1;
const PTE_U: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;

/// 4-level page tables that map `0 .. gib` GiB to itself in 2 MiB pages,
/// for guest physical address `gpa`: the PML4, the PDPT and `gib` page
/// directories, one page each, in that order. 2 MiB pages need nothing
/// from CPUID (1 GiB pages would need `pdpe1gb`). Accessed and dirty bits
/// are preset, so that walks only read the tables. `user` sets the user
/// bit everywhere, which nested page tables need (nested walks are user
/// accesses).
pub(super) fn identity_map(gpa: u64, gib: usize, user: bool) -> Vec<u8> {
    assert!((1..=512).contains(&gib));
    let u = if user { PTE_U } else { 0 };
    let table = PTE_P | PTE_W | PTE_A | u;
    let leaf = table | PTE_D | PTE_PS;
    let page = PAGE_SIZE as u64;
    let mut t = vec![0u64; (2 + gib) * 512];
    t[0] = (gpa + page) | table;
    for i in 0..gib {
        t[512 + i] = (gpa + (2 + i as u64) * page) | table;
        for j in 0..512 {
            t[(2 + i) * 512 + j] = (((i * 512 + j) as u64) << 21) | leaf;
        }
    }
    t.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// The guest's own page tables, for [`PAGE_TABLES_GPA`].
pub(super) fn guest_page_tables() -> Vec<u8> {
    identity_map(PAGE_TABLES_GPA, IDENTITY_GIB, false)
}

/// Pages at the start of data memory that [`super::TouchVm::run_nested_once`]
/// uses for the VMCB, the host save area, L2's code and data, and L1's
/// nested page table.
pub const NESTED_RESERVED_PAGES: usize = 16;
pub(super) const NESTED_VMCB: u64 = 0x1000;
pub(super) const NESTED_HSAVE: u64 = 0x2000;
pub(super) const NESTED_L2_CODE: u64 = 0x3000;
pub(super) const NESTED_L2_SRC: u64 = 0x4000;
pub(super) const NESTED_L2_DST: u64 = 0x5000;
pub(super) const NESTED_L2_STACK: u64 = 0x6000;
/// L1's nested page table: [`identity_map`] of L2's 4 GiB.
pub(super) const NESTED_NPT: u64 = 0x7000;
pub(super) const NESTED_NPT_GIB: usize = MAX_DATA_SVM >> 30;
/// The nested runs write reserved pages 1 to this one (exclusive).
pub(super) const NESTED_PAGES_END: usize = NESTED_NPT as usize / PAGE_SIZE + 2 + NESTED_NPT_GIB;
const _: () = assert!(NESTED_PAGES_END <= NESTED_RESERVED_PAGES);
pub(super) const EFER_SVME: u64 = 1 << 12;
pub(super) const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;
pub(super) const SVM_EXIT_VMMCALL: u64 = 0x81;
/// L2 (32-bit code): copies the marker from [`NESTED_L2_SRC`] to
/// [`NESTED_L2_DST`].
pub(super) const L2_PROGRAM: &[Insn] = &[
    (&[0xa1, 0x00, 0x40, 0x00, 0x00], "mov eax,ds:0x4000"),
    (&[0xa3, 0x00, 0x50, 0x00, 0x00], "mov ds:0x5000,eax"),
    (&[0x0f, 0x01, 0xd9], "vmmcall"),
    (&[0xf4], "hlt"),
];
const _: () = assert!(NESTED_L2_SRC == 0x4000 && NESTED_L2_DST == 0x5000);
/// L2 (32-bit code): reads like [`READ_LOOP`]. L1's esi, edi and ecx reach
/// L2 unchanged (VMRUN loads only rax, rsp and rip from the VMCB).
pub(super) const L2_READ_LOOP: &[Insn] = &[
    (&[0x8b, 0x06], "mov eax,DWORD PTR [esi]"),
    (&[0x01, 0xfe], "add esi,edi"),
    (&[0x49], "dec ecx"),
    (&[0x75, 0xf9], "jne 0x0"),
    (&[0x0f, 0x01, 0xd9], "vmmcall"),
    (&[0xf4], "hlt"),
];

/// A VMCB (AMD APM vol. 2, appendix B) for L2: 32-bit protected mode with
/// paging off, flat segments, nested paging on with [`NESTED_NPT`] as
/// nested CR3, intercepting `VMRUN` (required), `VMMCALL`, `HLT` and
/// shutdown, so that whatever L2 does ends in an exit to L1.
///
/// L2's nested page table has the format of L1's paging mode (long mode:
/// 4 levels), whatever mode L2 runs in.
pub(super) fn vmcb12() -> Vec<u8> {
    let mut v = vec![0u8; PAGE_SIZE];
    let mut put = |off: usize, bytes: &[u8]| v[off..off + bytes.len()].copy_from_slice(bytes);
    // Control area.
    put(0x0c, &((1u32 << 24) | (1u32 << 31)).to_le_bytes()); // HLT, SHUTDOWN
    put(0x10, &3u32.to_le_bytes()); // VMRUN, VMMCALL
    put(0x58, &1u32.to_le_bytes()); // ASID
    put(0x90, &1u64.to_le_bytes()); // nested_ctl: NP_ENABLE
    put(0xb0, &NESTED_NPT.to_le_bytes()); // nested CR3

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// `objdump`'s disassembly of `code` as (bytes, assembly) pairs,
    /// whitespace collapsed.
    fn disassemble(code: &[u8], arch: &str, name: &str) -> Vec<(Vec<u8>, String)> {
        let path =
            std::env::temp_dir().join(format!("mglru-guest-{}-{name}.bin", std::process::id()));
        std::fs::write(&path, code).unwrap();
        let out = Command::new("objdump")
            .args(["-D", "-b", "binary", "-m", arch, "-M", "intel"])
            .arg(&path)
            .output()
            .expect("objdump (binutils, which gcc depends on) disassembles the guest programs");
        std::fs::remove_file(&path).unwrap();
        assert!(out.status.success(), "objdump failed on {name}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| {
                // "   5:\tff c9                \tdec    ecx"
                let mut f = l.split('\t');
                let addr = f.next()?.trim();
                if !addr.ends_with(':') || u32::from_str_radix(&addr[..addr.len() - 1], 16).is_err()
                {
                    return None;
                }
                let bytes = f
                    .next()?
                    .split_whitespace()
                    .map(|b| u8::from_str_radix(b, 16).unwrap())
                    .collect();
                let asm = f.next()?.split_whitespace().collect::<Vec<_>>().join(" ");
                Some((bytes, asm))
            })
            .collect()
    }

    fn check(insns: &[Insn], arch: &str, name: &str) {
        let want: Vec<(Vec<u8>, String)> = insns
            .iter()
            .map(|(b, a)| (b.to_vec(), a.to_string()))
            .collect();
        assert_eq!(disassemble(&assemble(insns), arch, name), want, "{name}");
    }

    #[test]
    fn programs_disassemble_as_documented() {
        for p in PROGRAMS {
            check(p.insns, "i386:x86-64", &format!("program-{:#x}", p.off));
        }
        check(L2_PROGRAM, "i386", "l2");
        check(L2_READ_LOOP, "i386", "l2read");
    }

    #[test]
    fn programs_page_holds_each_program_at_its_offset() {
        let page = programs_page();
        for p in PROGRAMS {
            let code = assemble(p.insns);
            let off = p.off as usize;
            assert_eq!(&page[off..off + code.len()], &code[..]);
        }
    }

    /// The 4-level walk of `addr` through `tables` (at guest physical
    /// `gpa`): the physical address and the leaf entry's flags.
    fn walk(tables: &[u8], gpa: u64, addr: u64) -> Option<(u64, u64)> {
        let entry = |table: u64, i: u64| {
            let off = (table - gpa + 8 * i) as usize;
            u64::from_le_bytes(tables[off..off + 8].try_into().unwrap())
        };
        let addr_mask = ((1u64 << 52) - 1) & !0xfff;
        let mut table = gpa;
        for (level, shift) in [39, 30].into_iter().enumerate() {
            let e = entry(table, (addr >> shift) & 511);
            if e & PTE_P == 0 || e & PTE_PS != 0 {
                return None;
            }
            assert_eq!(
                e & !addr_mask,
                PTE_P | PTE_W | PTE_A | (e & PTE_U),
                "level {level}"
            );
            table = e & addr_mask;
        }
        let e = entry(table, (addr >> 21) & 511);
        if e & PTE_P == 0 || e & PTE_PS == 0 {
            return None;
        }
        Some((
            (e & addr_mask & !0x1f_ffff) | (addr & 0x1f_ffff),
            e & !addr_mask,
        ))
    }

    #[test]
    fn guest_page_tables_map_data_code_and_log_to_themselves() {
        let t = guest_page_tables();
        assert_eq!(t.len(), TABLE_PAGES * PAGE_SIZE);
        let leaf = PTE_P | PTE_W | PTE_A | PTE_D | PTE_PS;
        let last_log = LOG_GPA + (MAX_DATA / PAGE_SIZE * 4) as u64 - 4;
        for a in [
            0,
            0x1234,
            (2 << 20) + 8,
            0x4000_0000,
            0xc000_0000,
            (4 << 30) + 0x1000,
            MAX_DATA as u64 - 4,
            CODE_GPA,
            PAGE_TABLES_GPA + 0x18,
            LOG_GPA,
            last_log,
        ] {
            assert_eq!(walk(&t, PAGE_TABLES_GPA, a), Some((a, leaf)), "{a:#x}");
        }
        assert_eq!(walk(&t, PAGE_TABLES_GPA, (IDENTITY_GIB as u64) << 30), None);
    }

    #[test]
    fn nested_page_table_maps_l2s_4g_as_user() {
        let t = identity_map(NESTED_NPT, NESTED_NPT_GIB, true);
        let leaf = PTE_P | PTE_W | PTE_U | PTE_A | PTE_D | PTE_PS;
        for a in [0, NESTED_L2_SRC, 0xc234_5678, (4 << 30) - 4] {
            assert_eq!(walk(&t, NESTED_NPT, a), Some((a, leaf)), "{a:#x}");
        }
        assert_eq!(walk(&t, NESTED_NPT, 4 << 30), None);
    }
}
