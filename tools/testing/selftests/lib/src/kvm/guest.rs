// SPDX-License-Identifier: GPL-2.0
//! What the guest sees: its memory layout, its programs and the nested
//! guest's VMCB.

/// Guest page size the program strides by.
pub const PAGE_SIZE: usize = 4096;
/// Guest physical address of the code memslot.
pub const CODE_GPA: u64 = 0xc000_0000;
/// I/O port the guest writes to when it finished a pass.
pub const DONE_PORT: u16 = 0x10;
/// Largest data memory the 32-bit guest can address below [`CODE_GPA`].
pub const MAX_DATA: usize = CODE_GPA as usize;

// mov [esi], eax | add esi, edi | dec ecx | jnz -7 | out 0x10, al | hlt
pub(super) const WRITE_LOOP: [u8; 10] =
    [0x89, 0x06, 0x01, 0xfe, 0x49, 0x75, 0xf9, 0xe6, 0x10, 0xf4];
// mov eax, [esi] | add esi, edi | dec ecx | jnz -7 | out 0x10, al | hlt
pub(super) const READ_LOOP: [u8; 10] = [0x8b, 0x06, 0x01, 0xfe, 0x49, 0x75, 0xf9, 0xe6, 0x10, 0xf4];
pub(super) const WRITE_OFF: u64 = 0;
pub(super) const READ_OFF: u64 = 0x10;
// mov eax, NESTED_VMCB | vmrun | out 0x10, al | hlt
pub(super) const VMRUN_ONCE: [u8; 11] = [
    0xb8, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x01, 0xd8, 0xe6, 0x10, 0xf4,
];
pub(super) const VMRUN_OFF: u64 = 0x20;
// loop: rdtsc | mov ebp, eax | mov [esi], ecx | rdtsc | sub eax, ebp |
//       mov [ebx], eax | add ebx, 4 | add esi, edi | dec ecx | jnz loop |
//       out 0x10, al | hlt
// Writes each page and logs the TSC cycles the write took (a fault
// included) as one u32 per page at ebx.
pub(super) const TIMED_WRITE_LOOP: [u8; 23] = [
    0x0f, 0x31, 0x89, 0xc5, 0x89, 0x0e, 0x0f, 0x31, 0x29, 0xe8, 0x89, 0x03, 0x83, 0xc3, 0x04, 0x01,
    0xfe, 0x49, 0x75, 0xec, 0xe6, 0x10, 0xf4,
];
pub(super) const TIMED_OFF: u64 = 0x40;
// loop: mov [esi], edx | add esi, edi | inc edx | dec ecx | jnz loop |
//       out 0x10, al | hlt
// Writes a pattern: page i of the range gets edx + i.
pub(super) const PATTERN_WRITE_LOOP: [u8; 11] = [
    0x89, 0x16, 0x01, 0xfe, 0x42, 0x49, 0x75, 0xf8, 0xe6, 0x10, 0xf4,
];
pub(super) const PATTERN_WRITE_OFF: u64 = 0x60;
// loop: mov eax, [esi] | cmp eax, edx | jne bad | add esi, edi | inc edx |
//       dec ecx | jnz loop | out 0x10, al | hlt
// bad:  out 0x11, al | hlt
// Checks the pattern; on the first mismatch it leaves through BAD_PORT with
// esi at the page, eax what it read and edx what it expected.
pub(super) const PATTERN_VERIFY_LOOP: [u8; 18] = [
    0x8b, 0x06, 0x39, 0xd0, 0x75, 0x09, 0x01, 0xfe, 0x42, 0x49, 0x75, 0xf4, 0xe6, 0x10, 0xf4, 0xe6,
    0x11, 0xf4,
];
pub(super) const PATTERN_VERIFY_OFF: u64 = 0x80;
/// I/O port of a pattern mismatch ([`super::TouchVm::verify_pattern_with`]).
pub const BAD_PORT: u16 = 0x11;
/// Guest physical address of the latency log memslot (one u32 per data
/// page), above the code.
pub(super) const LOG_GPA: u64 = CODE_GPA + (16 << 20);

/// Pages at the start of data memory that [`super::TouchVm::run_nested_once`]
/// uses for the VMCB, the host save area, L1's nested page table, L2, and
/// L1's own page directory.
pub const NESTED_RESERVED_PAGES: usize = 16;
pub(super) const NESTED_VMCB: u64 = 0x1000;
pub(super) const NESTED_HSAVE: u64 = 0x2000;
pub(super) const NESTED_NPT_PD: u64 = 0x3000;
pub(super) const NESTED_NPT_PT: u64 = 0x4000;
pub(super) const NESTED_L2_CODE: u64 = 0x5000;
pub(super) const NESTED_L2_SRC: u64 = 0x6000;
pub(super) const NESTED_L2_DST: u64 = 0x7000;
pub(super) const NESTED_L2_STACK: u64 = 0x8000;
pub(super) const NESTED_L1_PD: u64 = 0x9000;
pub(super) const CR0_PG: u64 = 1 << 31;
pub(super) const CR4_PSE: u64 = 1 << 4;
pub(super) const EFER_SVME: u64 = 1 << 12;
pub(super) const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;
pub(super) const SVM_EXIT_VMMCALL: u64 = 0x81;
// L2: mov eax, [0x6000] | mov [0x7000], eax | vmmcall | hlt
pub(super) const L2_PROGRAM: [u8; 14] = [
    0xa1, 0x00, 0x60, 0x00, 0x00, 0xa3, 0x00, 0x70, 0x00, 0x00, 0x0f, 0x01, 0xd9, 0xf4,
];
// L2: mov eax, [esi] | add esi, edi | dec ecx | jnz -7 | vmmcall | hlt
// L1's esi, edi and ecx reach L2 unchanged (VMRUN loads only rax, rsp and
// rip from the VMCB), so L1 sets them like for READ_LOOP.
pub(super) const L2_READ_LOOP: [u8; 11] = [
    0x8b, 0x06, 0x01, 0xfe, 0x49, 0x75, 0xf9, 0x0f, 0x01, 0xd9, 0xf4,
];

/// A VMCB (AMD APM vol. 2, appendix B) for L2: 32-bit protected mode with
/// paging off, flat segments, nested paging on with [`NESTED_NPT_PD`] as
/// nested CR3, intercepting `VMRUN` (required), `VMMCALL`, `HLT` and
/// shutdown, so that whatever L2 does ends in an exit to L1.
pub(super) fn vmcb12() -> Vec<u8> {
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
pub(super) fn identity_pd_4m(flags: u32) -> Vec<u8> {
    (0..1024u32)
        .flat_map(|i| ((i << 22) | flags).to_le_bytes())
        .collect()
}
