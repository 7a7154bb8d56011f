// SPDX-License-Identifier: GPL-2.0
//! lru_gen_debugfs_test: bad commands written to `/sys/kernel/debug/lru_gen`
//! fail with the errno `lru_gen_seq_write()` (mm/vmscan.c) gives them and
//! leave the memcg's generations alone.
//!
//! The commands are the ones the other tests write:
//!
//! ```text
//! + memcg_id node_id max_gen_nr [can_swap [force_scan]]       aging
//! - memcg_id node_id min_gen_nr [swappiness [nr_to_reclaim]]  eviction
//! ```
//!
//! separated by `,`, `;` or newlines. What the kernel does with them, and
//! what each case asserts:
//!
//! - a line `sscanf()` cannot read as `%c %u %u %lu [%u [%lu]]` with nothing
//!   after it (missing or non-numeric fields, negative numbers, hex, trailing
//!   junk, an extra field, a megabyte of junk), an unknown command character,
//!   a memcg id that names no memcg (or aliases one in 16 bits), a node without
//!   memory, a `max_gen_nr` above `max_seq`, a swappiness (`can_swap`) above
//!   200, an eviction of a generation younger than `max_seq - 1`, and a write
//!   with no command at all: `EINVAL`;
//! - aging without `force_scan` when the lruvec already has `MAX_NR_GENS`
//!   generations: `ERANGE`;
//! - a buffer the kernel cannot copy: `EFAULT`;
//! - a `max_gen_nr` below `max_seq` (someone else aged already) is not an
//!   error: the write succeeds and does nothing;
//! - commands run in order until the first bad one, which fails the write:
//!   those before it have taken effect, none after it has.
//!
//! "Nothing changed" is checked on the memcg's lruvecs as `lru_gen` prints
//! them: `min_seq`, `max_seq` and every generation's anon and file page
//! counts, before and after every write. The memcg holds 8 MiB of the test's
//! own anonymous memory, which nothing touches while the cases run (the test
//! leaves the memcg after faulting it in, so nothing new is charged there).
//!
//! Nothing here depends on the mglru-secondary series: the write interface is
//! 6.12's, and the test reads `lru_gen`, not `lru_gen_full`.

use clap::Parser;
use mglru_selftest::features::{self, caps, CapsGuard};
use mglru_selftest::kvm::{Backing, HostMem, PAGE_SIZE};
use mglru_selftest::lru_gen::{self, Node};
use mglru_selftest::memcg::{Memcg, CGROUP_ROOT};
use mglru_selftest::{bail, ktap::Ktap, sys, Context, Result};
use std::os::fd::AsRawFd;

const MEMCG: &str = "lru-gen-debugfs";
/// Anonymous memory the memcg holds while the cases run.
const MEM: usize = 8 << 20;
/// `MAX_NR_GENS` (include/linux/mmzone.h).
const MAX_NR_GENS: usize = 4;
/// Length of the over-long lines.
const LONG: usize = 1 << 20;

/// Bad commands to `/sys/kernel/debug/lru_gen` fail with the errno the
/// kernel's parser gives them and change no generation. Exit status: 0
/// pass, 1 fail, 4 skip, 2 usage error.
#[derive(Parser, Debug)]
#[command(name = "lru_gen_debugfs_test", version, about, long_about = None)]
struct Opts {}

/// `(seq, anon pages, file pages)` of one generation.
type Gen = (u64, u64, u64);

/// What `lru_gen` shows of one memcg: per node, each generation from
/// `min_seq` (of anon) to `max_seq`. Ages are left out: they change by
/// themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State(Vec<(u32, Vec<Gen>)>);

impl State {
    fn of(nodes: &[Node]) -> Self {
        State(
            nodes
                .iter()
                .map(|n| {
                    (
                        n.nid,
                        n.gens.iter().map(|g| (g.seq, g.anon, g.file)).collect(),
                    )
                })
                .collect(),
        )
    }

    fn node(&self, nid: u32) -> Result<&[Gen]> {
        self.0
            .iter()
            .find(|(n, _)| *n == nid)
            .map(|(_, g)| g.as_slice())
            .with_context(|| format!("node {nid} not listed"))
    }

    /// `(min_seq, max_seq)` on `nid`.
    fn seqs(&self, nid: u32) -> Result<(u64, u64)> {
        let g = self.node(nid)?;
        match (g.first(), g.last()) {
            (Some(a), Some(b)) => Ok((a.0, b.0)),
            _ => bail!("node {nid} lists no generation"),
        }
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(nid, gens)| {
                let g: Vec<String> = gens
                    .iter()
                    .map(|(s, a, f)| format!("{s}:{a}a/{f}f"))
                    .collect();
                format!("node {nid} [{}]", g.join(" "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The memcg under test and the memory it holds.
struct Fixture {
    /// Dropped before the memcg is removed.
    _mem: HostMem,
    cg: Memcg,
    id: u32,
    nid: u32,
    /// Ids that name no memcg, and node ids without memory.
    free_id: u32,
    free_nid: u32,
}

/// The calling thread's CPU affinity, restored when dropped.
struct Pinned(libc::cpu_set_t);

impl Pinned {
    /// Pins the calling thread to the CPU it runs on.
    fn here() -> Result<Self> {
        // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
        let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `old` is a valid cpu_set_t of `size` bytes.
        if unsafe { libc::sched_getaffinity(0, size, &mut old) } != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
        }
        // SAFETY: no arguments; returns the CPU or -1.
        let cpu = unsafe { libc::sched_getcpu() };
        if cpu < 0 {
            return Err(std::io::Error::last_os_error()).context("sched_getcpu");
        }
        // SAFETY: as above.
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` is a CPU number the kernel just gave us, below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu as usize, &mut one) };
        // SAFETY: `one` is a valid cpu_set_t of `size` bytes.
        if unsafe { libc::sched_setaffinity(0, size, &one) } != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
        Ok(Pinned(old))
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: restoring the set sched_getaffinity() returned.
        unsafe { libc::sched_setaffinity(0, size, &self.0) };
    }
}

impl Fixture {
    fn new() -> Result<Self> {
        let cg = Memcg::create(MEMCG)?;
        let mem = {
            // New folios wait in per-CPU batches (31 each) before they reach
            // the LRU lists. Fault the memcg's memory in on one CPU, then,
            // back outside the memcg, fault in more than a batch on the same
            // CPU: the batch drains, and no page of the memcg reaches its
            // generations later, while a case runs.
            let _pin = Pinned::here()?;
            let root_procs = format!("{CGROUP_ROOT}/cgroup.procs");
            let pid = std::process::id().to_string();
            cg.enter()?;
            let mem = HostMem::new(MEM, Backing::Anon4k).map(|mut m| {
                m.fill(0x6465_6267);
                m
            });
            sys::write(&root_procs, &pid).context("leaving the memcg")?;
            let mem = mem?;
            let mut flush = HostMem::new(256 * PAGE_SIZE, Backing::Anon4k)?;
            flush.fill(1);
            mem
        };
        let all = lru_gen::read()?;
        let m = lru_gen::find(&all, &cg.path())
            .with_context(|| format!("memcg {} not listed in lru_gen", cg.path()))?;
        let id = m.id;
        let used: Vec<u32> = all.iter().map(|m| m.id).collect();
        let free_id = (1..=u16::MAX as u32)
            .rev()
            .find(|i| !used.contains(i))
            .context("every memcg id is used")?;
        let anon: u64 = m.nodes.iter().map(Node::total_anon).sum();
        if anon < (MEM / PAGE_SIZE) as u64 {
            bail!(
                "memcg {} holds {anon} anon pages, fewer than the {} faulted in there",
                cg.path(),
                MEM / PAGE_SIZE
            );
        }
        let nids: Vec<u32> = m.nodes.iter().map(|n| n.nid).collect();
        let nid = nids[0];
        let free_nid = nids.iter().max().unwrap_or(&0) + 1;
        Ok(Fixture {
            cg,
            id,
            nid,
            free_id,
            free_nid,
            _mem: mem,
        })
    }

    fn state(&self) -> Result<State> {
        let all = lru_gen::read()?;
        let m = lru_gen::find(&all, &self.cg.path())
            .with_context(|| format!("memcg {} vanished", self.cg.path()))?;
        Ok(State::of(&m.nodes))
    }

    /// `(min_seq, max_seq)` of the lruvec under test.
    fn seqs(&self) -> Result<(u64, u64)> {
        self.state()?.seqs(self.nid)
    }

    /// Ages (forced) until the lruvec has `MAX_NR_GENS` generations, as a
    /// lruvec that was aged a few times and not evicted has.
    fn fill_generations(&self) -> Result<()> {
        for _ in 0..=MAX_NR_GENS {
            let (min, max) = self.seqs()?;
            if (max - min) as usize + 1 >= MAX_NR_GENS {
                return Ok(());
            }
            lru_gen::age(self.id, self.nid, max, true, true)?;
        }
        bail!(
            "still fewer than {MAX_NR_GENS} generations after aging: {}",
            self.state()?.describe()
        )
    }
}

/// Writes `bytes` to `lru_gen` with exactly one write(2) of exactly that
/// length (even zero); returns what write() returned, or the errno.
fn write_once(bytes: &[u8]) -> std::result::Result<usize, i32> {
    write_raw(bytes.as_ptr(), bytes.len())
}

/// One write(2) of `len` bytes from `ptr`, which may be a bad address.
fn write_raw(ptr: *const u8, len: usize) -> std::result::Result<usize, i32> {
    let f = match std::fs::OpenOptions::new()
        .write(true)
        .open(lru_gen::LRU_GEN_DEBUGFS)
    {
        Ok(f) => f,
        Err(e) => return Err(e.raw_os_error().unwrap_or(0)),
    };
    // SAFETY: write(2) only reads from `ptr`; a bad address makes it fail
    // with EFAULT, which is what some cases want.
    let r = unsafe { libc::write(f.as_raw_fd(), ptr.cast(), len) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r as usize)
    }
}

fn errno_name(e: i32) -> String {
    match e {
        libc::EINVAL => "EINVAL".into(),
        libc::ERANGE => "ERANGE".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::EINTR => "EINTR".into(),
        e => format!("errno {e}"),
    }
}

/// A command for messages: long ones cut, control characters escaped.
fn shown(cmd: &[u8]) -> String {
    let s = String::from_utf8_lossy(&cmd[..cmd.len().min(48)]);
    if cmd.len() > 48 {
        format!("{s:?}... ({} bytes)", cmd.len())
    } else {
        format!("{s:?}")
    }
}

/// The outcome a case expects.
#[derive(Clone, Copy)]
enum Want {
    /// The write fails with this errno.
    Errno(i32),
    /// The write succeeds (returns its length) and does nothing.
    NoOp,
}

/// Collects the failures of one group of cases.
struct Cases<'a> {
    f: &'a Fixture,
    tried: usize,
    bad: Vec<String>,
}

impl<'a> Cases<'a> {
    fn new(f: &'a Fixture) -> Self {
        Cases {
            f,
            tried: 0,
            bad: Vec::new(),
        }
    }

    /// Writes `cmd`, expects `want`, and checks the memcg's generations
    /// did not change.
    fn expect(&mut self, what: &str, cmd: &[u8], want: Want) -> Result<()> {
        let before = self.f.state()?;
        let r = write_once(cmd);
        let after = self.f.state()?;
        self.judge(what, &shown(cmd), cmd.len(), r, want, &before, &after);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn judge(
        &mut self,
        what: &str,
        cmd: &str,
        len: usize,
        r: std::result::Result<usize, i32>,
        want: Want,
        before: &State,
        after: &State,
    ) {
        self.tried += 1;
        match (want, r) {
            (Want::Errno(e), Err(got)) if got == e => {}
            (Want::NoOp, Ok(n)) if n == len => {}
            (Want::Errno(e), r) => self.bad.push(format!(
                "{what}: {cmd} gave {}, expected {}",
                outcome(r),
                errno_name(e)
            )),
            (Want::NoOp, r) => self.bad.push(format!(
                "{what}: {cmd} gave {}, expected success ({len} bytes)",
                outcome(r)
            )),
        }
        if before != after {
            self.bad.push(format!(
                "{what}: {cmd} changed the memcg: {} -> {}",
                before.describe(),
                after.describe()
            ));
        }
    }

    fn einval(&mut self, what: &str, cmd: &str) -> Result<()> {
        self.expect(what, cmd.as_bytes(), Want::Errno(libc::EINVAL))
    }

    fn finish(self, t: &Ktap, group: &str) -> Result<()> {
        t.diag(&format!("{group}: {} writes", self.tried));
        if !self.bad.is_empty() {
            bail!("{}", self.bad.join("; "));
        }
        Ok(())
    }
}

fn outcome(r: std::result::Result<usize, i32>) -> String {
    match r {
        Ok(n) => format!("success ({n} bytes)"),
        Err(e) => errno_name(e),
    }
}

/// The positive control: a well-formed aging command, written the way the
/// cases write theirs, creates a generation.
fn valid_command_ages(f: &Fixture) -> Result<()> {
    let (_, max) = f.seqs()?;
    let cmd = format!("+ {} {} {max} 1 1\n", f.id, f.nid);
    match write_once(cmd.as_bytes()) {
        Ok(n) if n == cmd.len() => {}
        r => bail!("{}: {}", shown(cmd.as_bytes()), outcome(r)),
    }
    let (_, now) = f.seqs()?;
    if now != max + 1 {
        bail!("max_seq {now} after aging from {max}, expected {}", max + 1);
    }
    f.fill_generations()
}

fn empty_writes(t: &Ktap, f: &Fixture) -> Result<()> {
    let mut c = Cases::new(f);
    for (what, cmd) in [
        ("zero-length write", ""),
        ("newline only", "\n"),
        ("blanks only", "  \t \n"),
        ("separators only", ",;\n,,;"),
    ] {
        c.einval(what, cmd)?;
    }
    c.finish(t, "writes without a command")
}

fn unknown_commands(t: &Ktap, f: &Fixture) -> Result<()> {
    let (min, max) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let mut c = Cases::new(f);
    for (what, cmd) in [
        ("'*'", format!("* {id} {nid} {max} 1 1")),
        ("'a'", format!("a {id} {nid} {max} 1 1")),
        ("'='", format!("= {id} {nid} {min} 0 1")),
        ("digit as command", format!("7 {id} {nid} {max}")),
        ("doubled '+'", format!("++ {id} {nid} {max} 1 1")),
    ] {
        c.einval(what, &cmd)?;
    }
    c.finish(t, "unknown commands")
}

fn missing_fields(t: &Ktap, f: &Fixture) -> Result<()> {
    let (id, nid) = (f.id, f.nid);
    let mut c = Cases::new(f);
    for (what, cmd) in [
        ("'+' alone", "+".to_string()),
        ("'-' alone", "-".to_string()),
        ("aging without node", format!("+ {id}")),
        ("aging without max_gen_nr", format!("+ {id} {nid}\n")),
        ("eviction without min_gen_nr", format!("- {id} {nid}")),
    ] {
        c.einval(what, &cmd)?;
    }
    c.finish(t, "missing fields")
}

fn non_numeric_fields(t: &Ktap, f: &Fixture) -> Result<()> {
    let (min, max) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let mut c = Cases::new(f);
    for (what, cmd) in [
        ("memcg id", format!("+ x {nid} {max} 1 1")),
        ("node id", format!("+ {id} x {max} 1 1")),
        ("max_gen_nr", format!("+ {id} {nid} max 1 1")),
        ("can_swap", format!("+ {id} {nid} {max} yes 1")),
        ("force_scan", format!("+ {id} {nid} {max} 1 y")),
        ("swappiness", format!("- {id} {nid} {min} x 1")),
        ("nr_to_reclaim", format!("- {id} {nid} {min} 0 all")),
        ("negative memcg id", format!("+ -{id} {nid} {max} 1 1")),
        ("negative max_gen_nr", format!("+ {id} {nid} -1 1 1")),
        ("hex max_gen_nr", format!("+ {id} {nid} {max:#x} 1 1")),
        ("decimal point", format!("+ {id} {nid} {max} 1.0 1")),
        ("digits then letters", format!("+ {id} {nid} {max}x 1 1")),
        ("trailing word", format!("+ {id} {nid} {max} 1 1 now")),
        ("sixth field", format!("+ {id} {nid} {max} 1 1 1")),
    ] {
        c.einval(what, &cmd)?;
    }
    c.finish(t, "non-numeric fields")
}

fn nonexistent_memcg(t: &Ktap, f: &Fixture) -> Result<()> {
    let (_, max) = f.seqs()?;
    let (id, nid, free) = (f.id, f.nid, f.free_id);
    let mut c = Cases::new(f);
    t.diag(&format!("memcg under test: id {id}; unused id: {free}"));
    for (what, cmd) in [
        ("id 0", format!("+ 0 {nid} {max} 1 1")),
        ("unused id", format!("+ {free} {nid} {max} 1 1")),
        // mem_cgroup_from_id() takes 16 bits: this finds our memcg, whose
        // id then differs from the one written.
        (
            "id + 65536 aliasing ours",
            format!("+ {} {nid} {max} 1 1", id + 65536),
        ),
        ("id 2^32 - 1", format!("+ 4294967295 {nid} {max} 1 1")),
    ] {
        c.einval(what, &cmd)?;
    }
    c.finish(t, "memcg ids naming no memcg")
}

fn bad_nodes(t: &Ktap, f: &Fixture) -> Result<()> {
    let (_, max) = f.seqs()?;
    let (id, free) = (f.id, f.free_nid);
    let mut c = Cases::new(f);
    for (what, cmd) in [
        ("node without memory", format!("+ {id} {free} {max} 1 1")),
        ("node 1024", format!("+ {id} 1024 {max} 1 1")),
        ("node 2^32 - 1 (-1)", format!("+ {id} 4294967295 {max} 1 1")),
    ] {
        c.einval(what, &cmd)?;
    }
    c.finish(t, "bad node ids")
}

fn future_max_gen_nr(t: &Ktap, f: &Fixture) -> Result<()> {
    let (_, max) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let mut c = Cases::new(f);
    for (what, cmd) in [
        ("max_seq + 1", format!("+ {id} {nid} {} 1 1", max + 1)),
        ("max_seq + 100", format!("+ {id} {nid} {} 1 1", max + 100)),
        ("2^64 - 1", format!("+ {id} {nid} {} 1 1", u64::MAX)),
    ] {
        c.einval(what, &cmd)?;
    }
    c.finish(t, "max_gen_nr above max_seq")
}

/// A `max_gen_nr` below `max_seq` means the generation was created already
/// (by someone else): the kernel returns success and does nothing.
fn stale_max_gen_nr(t: &Ktap, f: &Fixture) -> Result<()> {
    let (_, max) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let mut c = Cases::new(f);
    for (what, cmd) in [
        ("max_seq - 1", format!("+ {id} {nid} {} 1 1", max - 1)),
        ("0", format!("+ {id} {nid} 0 1 1")),
        (
            "max_seq - 1, no options",
            format!("+ {id} {nid} {}", max - 1),
        ),
    ] {
        c.expect(what, cmd.as_bytes(), Want::NoOp)?;
    }
    c.finish(t, "stale max_gen_nr")
}

fn can_swap_out_of_range(t: &Ktap, f: &Fixture) -> Result<()> {
    let (_, max) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let mut c = Cases::new(f);
    // can_swap is read as a swappiness; above MAX_SWAPPINESS (200) is bad.
    for v in [201u32, 1000, i32::MAX as u32] {
        c.einval(
            &format!("can_swap {v}"),
            &format!("+ {id} {nid} {max} {v} 1"),
        )?;
    }
    c.finish(t, "can_swap above 200")
}

fn no_force_scan_when_full(t: &Ktap, f: &Fixture) -> Result<()> {
    f.fill_generations()?;
    let (_, max) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let mut c = Cases::new(f);
    for (what, cmd) in [
        ("can_swap 1", format!("+ {id} {nid} {max} 1 0")),
        ("can_swap 200", format!("+ {id} {nid} {max} 200 0")),
    ] {
        c.expect(what, cmd.as_bytes(), Want::Errno(libc::ERANGE))?;
    }
    c.finish(t, "aging without force_scan, generations full")
}

fn eviction_swappiness_out_of_range(t: &Ktap, f: &Fixture) -> Result<()> {
    let (min, _) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let mut c = Cases::new(f);
    for v in [201u32, 1000, i32::MAX as u32] {
        c.einval(
            &format!("swappiness {v}"),
            &format!("- {id} {nid} {min} {v} 1000"),
        )?;
    }
    c.finish(t, "eviction swappiness above 200")
}

fn eviction_too_young(t: &Ktap, f: &Fixture) -> Result<()> {
    let (_, max) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let mut c = Cases::new(f);
    // run_eviction() needs min_gen_nr + MIN_NR_GENS (2) <= max_seq.
    for (what, cmd) in [
        ("max_seq - 1", format!("- {id} {nid} {} 200 1000", max - 1)),
        ("max_seq", format!("- {id} {nid} {max} 0 1000")),
        ("max_seq + 1", format!("- {id} {nid} {} 200 1000", max + 1)),
        (
            "max_seq - 1, no options",
            format!("- {id} {nid} {}", max - 1),
        ),
    ] {
        c.einval(what, &cmd)?;
    }
    c.finish(t, "eviction of too young generations")
}

fn over_long_lines(t: &Ktap, f: &Fixture) -> Result<()> {
    let (_, max) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let good = format!("+ {id} {nid} {max} 1 1");
    let mut c = Cases::new(f);
    for (what, cmd) in [
        (
            "a command and a megabyte of junk",
            format!("{good} {}", "x".repeat(LONG)),
        ),
        (
            "a command, a megabyte of blanks, junk",
            format!("{good}{}x", " ".repeat(LONG)),
        ),
        ("a megabyte of junk", "z".repeat(LONG)),
        ("4 MiB of junk", "+".repeat(4 * LONG)),
    ] {
        c.einval(what, &cmd)?;
    }
    c.finish(t, "over-long lines")
}

/// Commands run in order; the first bad one fails the write and stops it.
fn several_commands_one_bad(t: &Ktap, f: &Fixture) -> Result<()> {
    let (_, max) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let good = format!("+ {id} {nid} {max} 1 1");
    let mut c = Cases::new(f);
    for (what, cmd) in [
        ("bad first", format!("+ {id} {nid} {} 1 1;{good}", max + 1)),
        (
            "bad first, newline",
            format!("+ {id} 4294967295 {max} 1 1\n{good}\n"),
        ),
        (
            "stale no-op, then bad",
            format!("+ {id} {nid} {} 1 1, + {id} {nid} {max} 201 1\n", max - 1),
        ),
        (
            "stale no-op, bare '-', good",
            format!("+ {id} {nid} {} 1 1;-;{good}", max - 1),
        ),
    ] {
        c.einval(what, &cmd)?;
    }
    // A good command before the bad one has run: the write fails, the
    // generation it created stays, the good command after the bad one
    // does not run.
    let before = f.state()?;
    let cmd = format!(
        "{good}; * {id} {nid} {} 1 1; + {id} {nid} {} 1 1",
        max + 1,
        max + 1
    );
    let r = write_once(cmd.as_bytes());
    let after = f.state()?;
    c.tried += 1;
    if r != Err(libc::EINVAL) {
        c.bad.push(format!(
            "good; bad; good: {} gave {}, expected EINVAL",
            shown(cmd.as_bytes()),
            outcome(r)
        ));
    }
    let (_, now) = after.seqs(nid)?;
    if now != max + 1 {
        c.bad.push(format!(
            "good; bad; good: max_seq {max} -> {now}, expected {} (only the first command runs): {} -> {}",
            max + 1,
            before.describe(),
            after.describe()
        ));
    }
    c.finish(t, "several commands, one bad")
}

/// A buffer the kernel cannot read: EFAULT before any command runs.
fn bad_buffer(t: &Ktap, f: &Fixture) -> Result<()> {
    let (_, max) = f.seqs()?;
    let cmd = format!("+ {} {} {max} 1 1", f.id, f.nid);
    // Two pages, the second inaccessible; the command ends just before it,
    // and the write asks for a few bytes more.
    let mut two = HostMem::new(2 * PAGE_SIZE, Backing::Anon4k)?;
    let at = PAGE_SIZE - cmd.len();
    two.write_at(at, cmd.as_bytes())?;
    // SAFETY: the second page of our own mapping; nothing refers to it.
    let r = unsafe {
        libc::mprotect(
            two.as_ptr().add(PAGE_SIZE).cast(),
            PAGE_SIZE,
            libc::PROT_NONE,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("mprotect");
    }
    let mut c = Cases::new(f);
    // SAFETY (of the pointer arithmetic): `at` lies inside the mapping.
    let start = unsafe { two.as_ptr().add(at) }.cast_const();
    for (what, ptr, len) in [
        (
            "command running into a PROT_NONE page",
            start,
            cmd.len() + 8,
        ),
        (
            "PROT_NONE page",
            // SAFETY: inside the mapping.
            unsafe { two.as_ptr().add(PAGE_SIZE) }.cast_const(),
            16,
        ),
        ("NULL", std::ptr::null(), cmd.len()),
    ] {
        let before = f.state()?;
        let r = write_raw(ptr, len);
        let after = f.state()?;
        c.judge(
            what,
            &format!("{len} bytes at {ptr:p}"),
            len,
            r,
            Want::Errno(libc::EFAULT),
            &before,
            &after,
        );
    }
    c.finish(t, "unreadable buffers")
}

fn main() {
    let _ = Opts::parse();
    if let Some(why) = features::memcg_aging_missing() {
        Ktap::lacks(&why);
    }
    let guard = match CapsGuard::save() {
        Ok(g) => g,
        Err(e) => Ktap::bail_out(&format!("reading {}: {e:#}", features::LRU_GEN_ENABLED)),
    };
    let mut t = Ktap::new(16);
    if guard.saved() & caps::CORE == 0 {
        if let Err(e) = features::set_lru_gen_caps(guard.saved() | caps::CORE) {
            t.diag(&format!("enabling the multi-gen LRU: {e:#}"));
        }
    }
    let f = match Fixture::new().and_then(|f| {
        f.fill_generations()?;
        Ok(f)
    }) {
        Ok(f) => f,
        Err(e) => {
            drop(guard);
            Ktap::bail_out(&format!("setting up a memcg with generations: {e:#}"))
        }
    };
    match f.state() {
        Ok(s) => t.diag(&format!(
            "memcg {} (id {}): {}",
            f.cg.path(),
            f.id,
            s.describe()
        )),
        Err(e) => t.diag(&format!("{e:#}")),
    }
    t.check(
        "valid_aging_command_creates_generation",
        valid_command_ages(&f),
    );
    t.check("no_command_einval", empty_writes(&t, &f));
    t.check("unknown_command_einval", unknown_commands(&t, &f));
    t.check("missing_fields_einval", missing_fields(&t, &f));
    t.check("non_numeric_fields_einval", non_numeric_fields(&t, &f));
    t.check("nonexistent_memcg_einval", nonexistent_memcg(&t, &f));
    t.check("bad_node_einval", bad_nodes(&t, &f));
    t.check("future_max_gen_nr_einval", future_max_gen_nr(&t, &f));
    t.check("stale_max_gen_nr_noop", stale_max_gen_nr(&t, &f));
    t.check("can_swap_above_200_einval", can_swap_out_of_range(&t, &f));
    t.check(
        "aging_without_force_scan_full_erange",
        no_force_scan_when_full(&t, &f),
    );
    t.check(
        "eviction_swappiness_above_200_einval",
        eviction_swappiness_out_of_range(&t, &f),
    );
    t.check("eviction_too_young_einval", eviction_too_young(&t, &f));
    t.check("over_long_lines_einval", over_long_lines(&t, &f));
    t.check(
        "several_commands_stop_at_bad_one",
        several_commands_one_bad(&t, &f),
    );
    t.check("unreadable_buffer_efault", bad_buffer(&t, &f));
    drop(f);
    drop(guard);
    t.finish();
}
