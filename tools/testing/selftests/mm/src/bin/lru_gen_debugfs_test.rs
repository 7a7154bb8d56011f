// SPDX-License-Identifier: GPL-2.0
//! lru_gen_debugfs_test: bad commands written to `/sys/kernel/debug/lru_gen`
//! fail with the errno `lru_gen_seq_write()` (mm/vmscan.c) gives them and
//! leave the memcg's generations alone; commands whose meaning changed
//! between 6.12 and 7.x are asserted to do exactly what the running
//! kernel's major version does with them.
//!
//! The commands are the ones the other tests write:
//!
//! ```text
//! + memcg_id node_id max_gen_nr [can_swap [force_scan]]       aging
//! - memcg_id node_id min_gen_nr [swappiness [nr_to_reclaim]]  eviction
//! ```
//!
//! separated by `,`, `;` or newlines (both kernels read `can_swap` as a
//! swappiness). What the kernel does with them, and what each case asserts,
//! on both bases:
//!
//! - a line `sscanf()` cannot read as `%c %u %u %lu [%u [%lu]]` (6.12) or
//!   `%c %llu %u %lu [%4s [%lu]]` (7.x: a swappiness word of at most 4
//!   characters, `max` or what `kstrtouint(.., 0, ..)` takes) with nothing
//!   after it (missing or non-numeric fields, negative numbers, hex, trailing
//!   junk, an extra field, a megabyte of junk), an unknown command character,
//!   a memcg id that names no memcg (6.12: also one that aliases ours in 16
//!   bits; 7.x reads 64-bit cgroup ids), a node without memory, a
//!   `max_gen_nr` above `max_seq`, an eviction of a generation younger than
//!   `max_seq - 1`, and a write with no command at all: `EINVAL`;
//! - a buffer the kernel cannot copy: `EFAULT`;
//! - commands run in order until the first bad one, which fails the write:
//!   those before it have taken effect, none after it has.
//!
//! On 6.12 (any 6.x kernel; `run_aging()`, `run_cmd()`):
//!
//! - a swappiness above `MAX_SWAPPINESS` (200: 201, 1000, 2^31 - 1), aging
//!   or eviction: `EINVAL`;
//! - aging without `force_scan` when the lruvec already has `MAX_NR_GENS`
//!   generations: `ERANGE`;
//! - a `max_gen_nr` below `max_seq` (someone else aged already) is not an
//!   error: the write succeeds and does nothing.
//!
//! On 7.x (written from 7.3; any kernel of major version 7 or later):
//!
//! - a swappiness above `SWAPPINESS_ANON_ONLY` (201, "anon only", also
//!   written `max`): `EINVAL` — 202, 1000 and 9999 from `run_cmd()`'s range
//!   check; 2147483647 is read as `2147` and `483647` by `%4s`, which leaves
//!   the last field as trailing junk: `EINVAL` from the parser;
//! - `run_aging()` ignores a `max_gen_nr` up to `max_seq` and ages from
//!   `max_seq`, with no `ERANGE` for full generations: a `max_gen_nr` below
//!   `max_seq`, and aging without `force_scan` on full generations (with
//!   swappiness 1, 200, 201 and `max`), each succeed and add exactly one
//!   generation. The only other outcome, `EEXIST`, needs another aging of
//!   the same lruvec at the same time (`try_to_inc_max_seq()` refuses a
//!   `max_seq` whose mm walk is done or under way, `inc_max_seq()` a stale
//!   one), which nothing does to the test's memcg;
//! - a stale aging before a bad command has run (one generation), the
//!   commands after it have not.
//!
//! "Nothing changed" is checked on the memcg's lruvecs as `lru_gen` prints
//! them: `min_seq`, `max_seq` and every generation's anon and file page
//! counts, before and after every write. "Exactly one new generation": the
//! lruvec under test's `max_seq` is one higher and its anon and file page
//! totals are the same (aging moves pages between generations, adds or
//! frees none); every other node is unchanged. The memcg holds 8 MiB of the
//! test's own anonymous memory, which nothing touches while the cases run
//! (the test leaves the memcg after faulting it in, so nothing new is
//! charged there).
//!
//! Nothing here depends on the mglru-secondary series: the write interface is
//! the base kernel's, and the test reads `lru_gen`, not `lru_gen_full`.

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

/// Which `lru_gen_seq_write()` the running kernel has. A stale
/// `max_gen_nr`, the swappiness range and aging full generations without
/// `force_scan` mean different things on 6.12 and on 7.x.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rules {
    /// 6.12's (any 6.x kernel): a stale `max_gen_nr` is a no-op, swappiness
    /// up to `MAX_SWAPPINESS` (200), `ERANGE` for full generations.
    V6,
    /// 7.3's (any kernel of major version 7 or later): a stale `max_gen_nr`
    /// ages from `max_seq`, swappiness up to `SWAPPINESS_ANON_ONLY` (201),
    /// full generations age like any others.
    V7,
}

impl Rules {
    fn of(release: &str) -> Result<Self> {
        Ok(if features::release_major(release)? < 7 {
            Rules::V6
        } else {
            Rules::V7
        })
    }

    fn describe(self) -> &'static str {
        match self {
            Rules::V6 => "6.12's lru_gen write rules",
            Rules::V7 => "7.3's lru_gen write rules",
        }
    }
}

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

    /// `(anon, file)` pages in all generations on `nid`.
    fn totals(&self, nid: u32) -> Result<(u64, u64)> {
        Ok(self
            .node(nid)?
            .iter()
            .fold((0, 0), |(a, f), g| (a + g.1, f + g.2)))
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
        libc::EEXIST => "EEXIST".into(),
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
struct Want {
    /// `None`: the write succeeds (returns its length); `Some(e)`: it fails
    /// with errno `e`.
    errno: Option<i32>,
    /// 0: the memcg's generations do not change at all. n > 0: the lruvec
    /// under test gains exactly n generations (`max_seq` n higher, the same
    /// anon and file page totals) and no other node changes.
    new_gens: u64,
}

impl Want {
    /// The write fails with `e` and changes nothing.
    const fn errno(e: i32) -> Self {
        Want {
            errno: Some(e),
            new_gens: 0,
        }
    }

    /// The write succeeds and changes nothing.
    const NOOP: Want = Want {
        errno: None,
        new_gens: 0,
    };

    /// The write succeeds and adds exactly one generation.
    const AGES: Want = Want {
        errno: None,
        new_gens: 1,
    };
}

/// Whether `after` is `before` with exactly `n` more generations on `nid`
/// (and the same anon and file page totals there) and every other node
/// unchanged; the reason if not.
fn aged_by(before: &State, after: &State, nid: u32, n: u64) -> std::result::Result<(), String> {
    let nids = |s: &State| s.0.iter().map(|(nid, _)| *nid).collect::<Vec<_>>();
    if nids(before) != nids(after) {
        return Err(format!("nodes {:?} -> {:?}", nids(before), nids(after)));
    }
    for ((bn, bg), (_, ag)) in before.0.iter().zip(&after.0) {
        if *bn != nid && bg != ag {
            return Err(format!("node {bn}, not aged, changed"));
        }
    }
    let e = |e: anyhow::Error| format!("{e:#}");
    let ((_, bmax), (_, amax)) = (before.seqs(nid).map_err(e)?, after.seqs(nid).map_err(e)?);
    if amax != bmax + n {
        return Err(format!(
            "max_seq {bmax} -> {amax}, expected {} (exactly {n} new generation(s))",
            bmax + n
        ));
    }
    let (bt, at) = (
        before.totals(nid).map_err(e)?,
        after.totals(nid).map_err(e)?,
    );
    if bt != at {
        return Err(format!(
            "pages (anon, file) {bt:?} -> {at:?}, expected the same (aging adds or frees none)"
        ));
    }
    Ok(())
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
        match (want.errno, r) {
            (Some(e), Err(got)) if got == e => {}
            (None, Ok(n)) if n == len => {}
            (Some(e), r) => self.bad.push(format!(
                "{what}: {cmd} gave {}, expected {}",
                outcome(r),
                errno_name(e)
            )),
            (None, r) => self.bad.push(format!(
                "{what}: {cmd} gave {}, expected success ({len} bytes)",
                outcome(r)
            )),
        }
        if want.new_gens == 0 {
            if before != after {
                self.bad.push(format!(
                    "{what}: {cmd} changed the memcg: {} -> {}",
                    before.describe(),
                    after.describe()
                ));
            }
        } else if let Err(why) = aged_by(before, after, self.f.nid, want.new_gens) {
            self.bad.push(format!(
                "{what}: {cmd} on node {}: {why}: {} -> {}",
                self.f.nid,
                before.describe(),
                after.describe()
            ));
        }
    }

    fn einval(&mut self, what: &str, cmd: &str) -> Result<()> {
        self.expect(what, cmd.as_bytes(), Want::errno(libc::EINVAL))
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

fn nonexistent_memcg(t: &Ktap, f: &Fixture, rules: Rules) -> Result<()> {
    let (_, max) = f.seqs()?;
    let (id, nid, free) = (f.id, f.nid, f.free_id);
    let mut c = Cases::new(f);
    t.diag(&format!("memcg under test: id {id}; unused id: {free}"));
    for (what, cmd) in [
        ("id 0", format!("+ 0 {nid} {max} 1 1")),
        ("unused id", format!("+ {free} {nid} {max} 1 1")),
        // 6.12: mem_cgroup_from_id() takes 16 bits: this finds our memcg,
        // whose id then differs from the one written. 7.x: the id is the
        // 64-bit cgroup id (the cgroup directory's inode number, handed out
        // in increasing order), and no cgroup is made after ours: no cgroup
        // has this id.
        (
            match rules {
                Rules::V6 => "id + 65536 aliasing ours",
                Rules::V7 => "id + 65536",
            },
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

/// A `max_gen_nr` below `max_seq`. 6.12: the generation was created
/// already (by someone else): the kernel returns success and does nothing.
/// 7.x: `run_aging()` ages from `max_seq` anyway: success, one generation
/// more per write.
fn stale_max_gen_nr(t: &Ktap, f: &Fixture, rules: Rules) -> Result<()> {
    let (_, max) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let want = match rules {
        Rules::V6 => Want::NOOP,
        Rules::V7 => Want::AGES,
    };
    let mut c = Cases::new(f);
    for (what, cmd) in [
        ("max_seq - 1", format!("+ {id} {nid} {} 1 1", max - 1)),
        ("0", format!("+ {id} {nid} 0 1 1")),
        (
            "max_seq - 1, no options",
            format!("+ {id} {nid} {}", max - 1),
        ),
    ] {
        c.expect(what, cmd.as_bytes(), want)?;
    }
    c.finish(t, "stale max_gen_nr")
}

/// Swappiness values above the range each base accepts: 6.12's
/// `MAX_SWAPPINESS` (200), 7.x's `SWAPPINESS_ANON_ONLY` (201).
fn too_swappy(rules: Rules) -> &'static [u32] {
    match rules {
        Rules::V6 => &[201, 1000, i32::MAX as u32],
        // 7.x reads the field with %4s: 2147483647 becomes swappiness 2147
        // and 483647 the next field, and the line's last field is then
        // trailing junk. EINVAL all the same, from the parser.
        Rules::V7 => &[202, 1000, 9999, i32::MAX as u32],
    }
}

fn can_swap_out_of_range(t: &Ktap, f: &Fixture, rules: Rules) -> Result<()> {
    let (_, max) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let mut c = Cases::new(f);
    // can_swap is read as a swappiness; above the base's maximum is bad.
    let (label, group) = match rules {
        Rules::V6 => ("can_swap", "can_swap above 200"),
        Rules::V7 => ("swappiness", "swappiness above 201"),
    };
    for v in too_swappy(rules) {
        c.einval(
            &format!("{label} {v}"),
            &format!("+ {id} {nid} {max} {v} 1"),
        )?;
    }
    c.finish(t, group)
}

fn no_force_scan_when_full(t: &Ktap, f: &Fixture, rules: Rules) -> Result<()> {
    if rules == Rules::V7 {
        return no_force_scan_when_full_ages(t, f);
    }
    f.fill_generations()?;
    let (_, max) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let mut c = Cases::new(f);
    for (what, cmd) in [
        ("can_swap 1", format!("+ {id} {nid} {max} 1 0")),
        ("can_swap 200", format!("+ {id} {nid} {max} 200 0")),
    ] {
        c.expect(what, cmd.as_bytes(), Want::errno(libc::ERANGE))?;
    }
    c.finish(t, "aging without force_scan, generations full")
}

/// 7.x: `run_aging()` has no `ERANGE`; `inc_max_seq()` makes room by
/// retiring the oldest generation (`inc_min_seq()`). Swappiness 1, 200 and
/// 201 (also written `max`, the largest accepted) each age full
/// generations by exactly one.
fn no_force_scan_when_full_ages(t: &Ktap, f: &Fixture) -> Result<()> {
    let (id, nid) = (f.id, f.nid);
    let mut c = Cases::new(f);
    for v in ["1", "200", "201", "max"] {
        f.fill_generations()?;
        let (_, max) = f.seqs()?;
        c.expect(
            &format!("swappiness {v}"),
            format!("+ {id} {nid} {max} {v} 0").as_bytes(),
            Want::AGES,
        )?;
    }
    c.finish(t, "aging without force_scan, generations full")
}

fn eviction_swappiness_out_of_range(t: &Ktap, f: &Fixture, rules: Rules) -> Result<()> {
    let (min, _) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let mut c = Cases::new(f);
    for v in too_swappy(rules) {
        c.einval(
            &format!("swappiness {v}"),
            &format!("- {id} {nid} {min} {v} 1000"),
        )?;
    }
    c.finish(
        t,
        match rules {
            Rules::V6 => "eviction swappiness above 200",
            Rules::V7 => "eviction swappiness above 201",
        },
    )
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
fn several_commands_one_bad(t: &Ktap, f: &Fixture, rules: Rules) -> Result<()> {
    let (_, max) = f.seqs()?;
    let (id, nid) = (f.id, f.nid);
    let good = format!("+ {id} {nid} {max} 1 1");
    let mut c = Cases::new(f);
    let einval = Want::errno(libc::EINVAL);
    let mut cases = vec![
        (
            "bad first",
            format!("+ {id} {nid} {} 1 1;{good}", max + 1),
            einval,
        ),
        (
            "bad first, newline",
            format!("+ {id} 4294967295 {max} 1 1\n{good}\n"),
            einval,
        ),
    ];
    match rules {
        Rules::V6 => cases.extend([
            (
                "stale no-op, then bad",
                format!("+ {id} {nid} {} 1 1, + {id} {nid} {max} 201 1\n", max - 1),
                einval,
            ),
            (
                "stale no-op, bare '-', good",
                format!("+ {id} {nid} {} 1 1;-;{good}", max - 1),
                einval,
            ),
        ]),
        // 7.x: the stale command ages (one generation); the good one after
        // the bad one would age again, whatever its max_gen_nr.
        Rules::V7 => cases.extend([
            (
                "swappiness 202 first, then good",
                format!("+ {id} {nid} {max} 202 1, {good}\n"),
                einval,
            ),
            (
                "stale (ages), then swappiness 202",
                format!("+ {id} {nid} {} 1 1, + {id} {nid} {max} 202 1\n", max - 1),
                Want {
                    errno: Some(libc::EINVAL),
                    new_gens: 1,
                },
            ),
            (
                "stale (ages), bare '-', good",
                format!("+ {id} {nid} {} 1 1;-;{good}", max - 1),
                Want {
                    errno: Some(libc::EINVAL),
                    new_gens: 1,
                },
            ),
        ]),
    }
    for (what, cmd, want) in cases {
        c.expect(what, cmd.as_bytes(), want)?;
    }
    // Aging above may have moved max_seq.
    let (_, max) = f.seqs()?;
    let good = format!("+ {id} {nid} {max} 1 1");
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
            Want::errno(libc::EFAULT),
            &before,
            &after,
        );
    }
    c.finish(t, "unreadable buffers")
}

/// One case: runs its writes, fails with what went wrong.
type CaseFn = fn(&Ktap, &Fixture, Rules) -> Result<()>;

/// The cases, in the order they run, named for what they assert under
/// `rules`; the KTAP plan is their number.
fn cases(rules: Rules) -> [(&'static str, CaseFn); 16] {
    let v6 = rules == Rules::V6;
    [
        ("valid_aging_command_creates_generation", |_, f, _| {
            valid_command_ages(f)
        }),
        ("no_command_einval", |t, f, _| empty_writes(t, f)),
        ("unknown_command_einval", |t, f, _| unknown_commands(t, f)),
        ("missing_fields_einval", |t, f, _| missing_fields(t, f)),
        ("non_numeric_fields_einval", |t, f, _| {
            non_numeric_fields(t, f)
        }),
        ("nonexistent_memcg_einval", nonexistent_memcg),
        ("bad_node_einval", |t, f, _| bad_nodes(t, f)),
        ("future_max_gen_nr_einval", |t, f, _| {
            future_max_gen_nr(t, f)
        }),
        (
            if v6 {
                "stale_max_gen_nr_noop"
            } else {
                "stale_max_gen_nr_ages"
            },
            stale_max_gen_nr,
        ),
        (
            if v6 {
                "can_swap_above_200_einval"
            } else {
                "swappiness_above_201_einval"
            },
            can_swap_out_of_range,
        ),
        (
            if v6 {
                "aging_without_force_scan_full_erange"
            } else {
                "aging_without_force_scan_full_ages"
            },
            no_force_scan_when_full,
        ),
        (
            if v6 {
                "eviction_swappiness_above_200_einval"
            } else {
                "eviction_swappiness_above_201_einval"
            },
            eviction_swappiness_out_of_range,
        ),
        ("eviction_too_young_einval", |t, f, _| {
            eviction_too_young(t, f)
        }),
        ("over_long_lines_einval", |t, f, _| over_long_lines(t, f)),
        ("several_commands_stop_at_bad_one", several_commands_one_bad),
        ("unreadable_buffer_efault", |t, f, _| bad_buffer(t, f)),
    ]
}

fn main() {
    let _ = Opts::parse();
    if let Some(why) = features::memcg_aging_missing() {
        Ktap::lacks(&why);
    }
    let (release, rules) = match features::kernel_release().and_then(|r| {
        let rules = Rules::of(&r)?;
        Ok((r, rules))
    }) {
        Ok(x) => x,
        Err(e) => Ktap::bail_out(&format!("which kernel is this: {e:#}")),
    };
    let guard = match CapsGuard::save() {
        Ok(g) => g,
        Err(e) => Ktap::bail_out(&format!("reading {}: {e:#}", features::LRU_GEN_ENABLED)),
    };
    let cases = cases(rules);
    let mut t = Ktap::new(cases.len());
    t.diag(&format!("kernel {release}: {}", rules.describe()));
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
    for (name, case) in cases {
        let r = case(&t, &f, rules);
        t.check(name, r);
    }
    drop(f);
    drop(guard);
    t.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(rules: Rules) -> Vec<&'static str> {
        cases(rules).iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn rules_from_release() {
        assert_eq!(Rules::of("6.12.117-mglru-secondary").unwrap(), Rules::V6);
        assert_eq!(Rules::of("7.3.4-base").unwrap(), Rules::V7);
        assert_eq!(Rules::of("8.0.0").unwrap(), Rules::V7);
        assert!(Rules::of("").is_err());
    }

    #[test]
    fn v6_cases_are_612s() {
        assert_eq!(
            names(Rules::V6),
            [
                "valid_aging_command_creates_generation",
                "no_command_einval",
                "unknown_command_einval",
                "missing_fields_einval",
                "non_numeric_fields_einval",
                "nonexistent_memcg_einval",
                "bad_node_einval",
                "future_max_gen_nr_einval",
                "stale_max_gen_nr_noop",
                "can_swap_above_200_einval",
                "aging_without_force_scan_full_erange",
                "eviction_swappiness_above_200_einval",
                "eviction_too_young_einval",
                "over_long_lines_einval",
                "several_commands_stop_at_bad_one",
                "unreadable_buffer_efault",
            ]
        );
    }

    #[test]
    fn v7_cases_say_what_they_assert() {
        let v6 = names(Rules::V6);
        let v7 = names(Rules::V7);
        let changed: Vec<(&str, &str)> = v6
            .iter()
            .zip(&v7)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| (*a, *b))
            .collect();
        assert_eq!(
            changed,
            [
                ("stale_max_gen_nr_noop", "stale_max_gen_nr_ages"),
                ("can_swap_above_200_einval", "swappiness_above_201_einval"),
                (
                    "aging_without_force_scan_full_erange",
                    "aging_without_force_scan_full_ages"
                ),
                (
                    "eviction_swappiness_above_200_einval",
                    "eviction_swappiness_above_201_einval"
                ),
            ]
        );
        let mut unique = v7.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), v7.len());
    }

    #[test]
    fn too_swappy_is_above_each_bases_maximum() {
        assert!(too_swappy(Rules::V6).iter().all(|&v| v > 200));
        assert!(too_swappy(Rules::V6).contains(&201));
        assert!(too_swappy(Rules::V7).iter().all(|&v| v > 201));
        assert!(too_swappy(Rules::V7).contains(&202));
    }

    fn state(gens: &[Gen]) -> State {
        State(vec![(0, gens.to_vec()), (1, vec![(5, 1, 1)])])
    }

    #[test]
    fn aged_by_wants_one_more_generation_same_pages() {
        let before = state(&[(4, 10, 0), (5, 0, 0), (6, 0, 0), (7, 2038, 0)]);
        // min_seq moved, pages moved to the next generation: fine.
        let after = state(&[(5, 10, 0), (6, 0, 0), (7, 2038, 0), (8, 0, 0)]);
        assert_eq!(aged_by(&before, &after, 0, 1), Ok(()));
        assert!(aged_by(&before, &before, 0, 1).is_err());
        assert!(aged_by(&before, &after, 0, 2).is_err());
        // A page lost.
        let lost = state(&[(5, 9, 0), (6, 0, 0), (7, 2038, 0), (8, 0, 0)]);
        assert!(aged_by(&before, &lost, 0, 1).is_err());
        // Another node changed.
        let mut other = after.clone();
        other.0[1].1[0].1 = 2;
        assert!(aged_by(&before, &other, 0, 1).is_err());
    }
}
