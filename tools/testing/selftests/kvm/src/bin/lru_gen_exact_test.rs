// SPDX-License-Identifier: GPL-2.0
//! lru_gen_exact_test: which pages does one aging pass promote, page by
//! page, on deterministic inputs?
//!
//! Five scenarios in one memcg: a KVM guest touching every third page of
//! its memory through the TDP MMU only; the host touching every fourth page
//! of an anonymous range; a guest and the host touching interleaved pages of
//! one VM's memory; a guest whose memory is THPs (2 MiB folios, checked to
//! have formed) touching one 4 KiB page in some of them, where 6.12 promotes
//! the whole folio, not the page touched; and a guest whose PTE tables hold
//! every edge of a batch ([`Edges`]): two memslots with a hole between them
//! that only the host touches, the first ending and the second starting in
//! the middle of a table, two VMA boundaries inside one table, and 64 KiB
//! folios (mTHP, checked to have formed) next to 4 KiB pages in one table.
//! Everything is made old (two passes), the touches run, one pass ages, and
//! then every generation older than the one the pass filled is evicted to
//! swap: a page is still present afterwards exactly when the pass promoted
//! it. Every touched page (every page of a touched folio) must be present
//! and every other page swapped out.
//!
//! The test shows that it sees an off-by-one: with the `lru_gen_probe`
//! module (`testmod/`) shifting every fast-only answer by one page, a 0x8
//! round must fail.
//! Before the eviction the VMs' memslots are deleted, so that eviction
//! cannot consult KVM's accessed bits (it would keep a page the pass missed
//! but the guest touched); untouched control pages the guests touch only
//! after the pass show that this works: they must be evicted.
//!
//! On the series' kernel the pass's walk stats (`lru_gen_full`) must show
//! which path ran: with 0x8 set, fast-only calls (C) asked about every
//! guest page (Q), found the touched ones young (S, give or take the
//! guests' code pages) and failed none (E); with 0x8 clear, none at all.
//!
//! The maps are printed (and written with `--map-out`) so that
//! `make check-base` can compare unpatched 6.12 with the series (0x8 clear,
//! and set) page by page (`--compare`).
//!
//! Runs on any 6.12 kernel with MGLRU, memcgs, THP, KVM and swap on
//! /dev/ram0. Skips without /dev/kvm; on a kernel `scripts/vm-run` did not
//! boot also without MGLRU or /dev/ram0; everything else that goes wrong
//! is a failure.

use anyhow::{bail, Context, Result};
use clap::Parser;
use mglru_selftest::aging::{self, NID};
use mglru_selftest::features::{self, caps};
use mglru_selftest::ktap::Ktap;
use mglru_selftest::kvm::{Access, Backing, HostMem, TouchVm, PAGE_SIZE};
use mglru_selftest::lru_gen::{self, WalkStats};
use mglru_selftest::memcg::Memcg;
use mglru_selftest::pagemap::{self, PageState};
use mglru_selftest::probe::{Mode, Probe};
use mglru_selftest::sys;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

const SWAP_DEV: &str = "/dev/ram0";
const MEMCG: &str = "mglru-exact";
const VM_BYTES: usize = 8 << 20;
const HOST_BYTES: usize = 4 << 20;
/// The THP guest: four 2 MiB folios.
const THP_BYTES: usize = 8 << 20;
const HUGE_PAGES: usize = (2 << 20) / PAGE_SIZE;
/// The pages the THP guest reads after everything was made old: one in
/// folio 0, one in folio 2; folios 1 and 3 stay untouched.
const THP_TOUCHED: [usize; 2] = [37, 2 * HUGE_PAGES + 300];
/// Its control page, read after the pass (folio 1: untouched before it).
const THP_CONTROL: usize = HUGE_PAGES + 100;
const _: () = assert!(
    THP_CONTROL / HUGE_PAGES != THP_TOUCHED[0] / HUGE_PAGES
        && THP_CONTROL / HUGE_PAGES != THP_TOUCHED[1] / HUGE_PAGES
        && THP_TOUCHED[1] < THP_BYTES / PAGE_SIZE
);
/// The edge scenario: 8 MiB (four PTE tables) of guest memory.
const EDGE_BYTES: usize = 8 << 20;
/// 64 KiB folios: pages per folio.
const MTHP_PAGES: usize = 16;
const MTHP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/hugepages-64kB/enabled";

/// The layout of the edge scenario, in pages of its 8 MiB (tables of 512
/// pages start at 0, 512, 1024 and 1536).
struct Edges;

impl Edges {
    /// Memslot A ends in the middle of table 1 ...
    const SLOT_A: (usize, usize) = (0, 640);
    /// ... the host-only hole fills the next 128 pages ...
    const HOLE: (usize, usize) = (640, 128);
    /// ... and memslot B starts in the middle of table 1.
    const SLOT_B: (usize, usize) = (768, 1280);
    /// `MADV_DONTFORK`: two VMA boundaries inside table 2.
    const DONTFORK: (usize, usize) = (1124, 200);
    /// `MADV_HUGEPAGE` with 64 KiB mTHP enabled: 16 folios in the first
    /// half of table 3, 4 KiB pages (another VMA) in the second half.
    const MTHP: (usize, usize) = (1536, 256);

    fn in_range(i: usize, r: (usize, usize)) -> bool {
        (r.0..r.0 + r.1).contains(&i)
    }

    /// Pages the guest reads: every third page of both memslots outside the
    /// mTHP range, every page next to an edge, and in the mTHP range one
    /// page of every other folio plus the range's last page.
    fn guest_touched(i: usize) -> bool {
        let pages = EDGE_BYTES / PAGE_SIZE;
        let edges = [
            Self::SLOT_A.1 - 1,
            Self::SLOT_B.0,
            pages - 1,
            Self::DONTFORK.0 - 1,
            Self::DONTFORK.0,
            Self::DONTFORK.0 + Self::DONTFORK.1 - 1,
            Self::DONTFORK.0 + Self::DONTFORK.1,
            Self::MTHP.0 + Self::MTHP.1 - 1,
            Self::MTHP.0 + Self::MTHP.1,
        ];
        if Self::in_range(i, Self::HOLE) || i >= pages {
            return false;
        }
        if edges.contains(&i) {
            return true;
        }
        if Self::in_range(i, Self::MTHP) {
            let k = i - Self::MTHP.0;
            return (k / MTHP_PAGES).is_multiple_of(2) && k % MTHP_PAGES == 7;
        }
        i.is_multiple_of(3)
    }

    /// Hole pages the host reads: the odd ones (not the hole's first page,
    /// which follows memslot A's last, touched, page).
    fn host_touched(i: usize) -> bool {
        Self::in_range(i, Self::HOLE) && i % 2 == 1
    }

    /// What must be promoted: the touched pages, every page of an mTHP
    /// folio with a touched page.
    fn promoted(i: usize) -> bool {
        if Self::in_range(i, Self::MTHP) {
            let head = i - (i - Self::MTHP.0) % MTHP_PAGES;
            return (head..head + MTHP_PAGES).any(Self::guest_touched);
        }
        Self::guest_touched(i) || Self::host_touched(i)
    }
}
const _: () = assert!(
    Edges::SLOT_A.0 + Edges::SLOT_A.1 == Edges::HOLE.0
        && Edges::HOLE.0 + Edges::HOLE.1 == Edges::SLOT_B.0
        && Edges::SLOT_B.0 + Edges::SLOT_B.1 == EDGE_BYTES / PAGE_SIZE
        && !Edges::SLOT_A.1.is_multiple_of(512)
        && !Edges::SLOT_B.0.is_multiple_of(512)
        && Edges::DONTFORK.0 / 512 == (Edges::DONTFORK.0 + Edges::DONTFORK.1) / 512
        && Edges::MTHP.0.is_multiple_of(MTHP_PAGES)
        && Edges::MTHP.1.is_multiple_of(MTHP_PAGES)
        && !(Edges::MTHP.0 + Edges::MTHP.1).is_multiple_of(512)
);

/// Enables 64 KiB mTHP for `MADV_HUGEPAGE` ranges while it lives.
struct MthpGuard(Option<String>);

impl MthpGuard {
    fn enable() -> Result<Self> {
        if !features::exists(MTHP_ENABLED) {
            lacks(&format!("64 KiB mTHP ({MTHP_ENABLED})"));
        }
        let text = sys::read_trimmed(MTHP_ENABLED)?;
        let was = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
            .with_context(|| format!("{MTHP_ENABLED}: no [selected] value in {text:?}"))?
            .to_owned();
        sys::write(MTHP_ENABLED, "madvise")?;
        Ok(Self(Some(was)))
    }
}

impl Drop for MthpGuard {
    fn drop(&mut self) {
        if let Some(was) = self.0.take() {
            let _ = sys::write(MTHP_ENABLED, &was);
        }
    }
}

/// Checks that the mTHP range of `mem` is 64 KiB folios.
fn expect_mthp(mem: &HostMem, what: &str) -> Result<()> {
    let base = mem.as_ptr() as usize + Edges::MTHP.0 * PAGE_SIZE;
    for k in 0..Edges::MTHP.1 / MTHP_PAGES {
        if !pagemap::is_one_folio(base + k * MTHP_PAGES * PAGE_SIZE, MTHP_PAGES)? {
            bail!(
                "{what}: page {} does not start a 64 KiB folio",
                Edges::MTHP.0 + k * MTHP_PAGES
            );
        }
    }
    Ok(())
}

/// `madvise(advice)` on pages `first..first+count` of `mem`.
fn madvise(mem: &HostMem, (first, count): (usize, usize), advice: libc::c_int) -> Result<()> {
    if first + count > mem.pages() {
        bail!("madvise pages {first}+{count} beyond {}", mem.pages());
    }
    // SAFETY: a range inside our own mapping; the advice only splits the
    // VMA and changes fork/THP policy, never what the memory holds.
    let r = unsafe {
        libc::madvise(
            mem.as_ptr().add(first * PAGE_SIZE).cast(),
            count * PAGE_SIZE,
            advice,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("madvise");
    }
    Ok(())
}

/// Young fast-only answers one VM may add beyond the pages its guest
/// touched: the pages of its code memslot its walks and fetches touch (the
/// code page and the long-mode page tables: PML4, PDPT, the directory of
/// the code and one per GiB of data touched; 5 for these VMs), with room
/// to spare; the guest has no stack.
const SLACK_PER_VM: u64 = 8;
/// The capability masks of the two rounds.
const CAPS_0X7: u32 = caps::CORE | caps::MM_WALK | caps::NONLEAF_YOUNG;
const CAPS_0XF: u32 = CAPS_0X7 | caps::SECONDARY_MMU_WALK;

/// Page-exact promotion maps of one aging pass on fixed inputs. Exit
/// status: 0 pass, 1 fail, 4 skip, 2 usage error (a bad `--compare` file
/// or `--map-out` path included: nothing is touched then).
#[derive(Parser, Debug)]
#[command(name = "lru_gen_exact_test", version, about, long_about = None)]
struct Opts {
    /// Write the maps as JSON to this file.
    #[arg(short = 'o', long = "map-out", value_name = "FILE")]
    map_out: Option<PathBuf>,
    /// Compare with the maps unpatched 6.12 wrote (`--map-out` of a run on
    /// base): the same scenarios on the same inputs, and every map of this
    /// run (0x8 clear, and set) equal to base's, page by page.
    #[arg(short = 'c', long, value_name = "FILE", value_parser = parse_reference)]
    compare: Option<Reference>,
}

/// A map file: scenario name to pages as [`ranges`].
type Maps = BTreeMap<String, String>;

/// What `--compare` reads: the kernel that wrote the file, the touched
/// pages (the inputs) and its 0x8-clear maps (`caps_0x7`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reference {
    kernel: String,
    touched: Maps,
    maps: Maps,
}

fn parse_reference(path: &str) -> Result<Reference, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    Reference::parse(&text).map_err(|e| format!("{path}: {e:#}"))
}

/// The string map `v[key]`: a non-empty object of valid page ranges.
fn maps_of(v: &Value, key: &str) -> Result<Maps> {
    let o = v
        .get(key)
        .with_context(|| format!("no {key:?}"))?
        .as_object()
        .with_context(|| format!("{key:?} is not an object"))?;
    if o.is_empty() {
        bail!("{key:?} lists no scenario");
    }
    o.iter()
        .map(|(name, r)| {
            let s = r
                .as_str()
                .with_context(|| format!("{key}.{name} is not a string"))?;
            parse_ranges(s).with_context(|| format!("{key}.{name}"))?;
            Ok((name.clone(), s.to_owned()))
        })
        .collect()
}

impl Reference {
    fn parse(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).context("not JSON")?;
        let kernel = v
            .get("kernel")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .context("no \"kernel\" string: not a --map-out file")?
            .to_owned();
        if features::is_series_release(&kernel) {
            bail!(
                "written by {kernel}, one of the series' kernels: --compare wants the maps of \
                 unpatched 6.12 (make check-base's base.json)"
            );
        }
        let maps = maps_of(&v, "caps_0x7")?;
        let touched = maps_of(&v, "touched")?;
        if touched.keys().ne(maps.keys()) {
            bail!("\"touched\" and \"caps_0x7\" list different scenarios");
        }
        Ok(Self {
            kernel,
            touched,
            maps,
        })
    }
}

/// A scenario's result: which pages were touched (every page of a touched
/// folio) and where each page is after the pass and the eviction.
struct Map {
    name: &'static str,
    touched: Vec<bool>,
    states: Vec<PageState>,
}

impl Map {
    fn present(&self) -> Vec<bool> {
        self.states
            .iter()
            .map(|&s| s == PageState::Present)
            .collect()
    }

    fn count(&self, state: PageState) -> usize {
        self.states.iter().filter(|&&s| s == state).count()
    }

    /// Pages where the pass was wrong: a touched page not present, or an
    /// untouched one not swapped out (absent is not evicted: it would hide
    /// a page that left memory some other way).
    fn mismatches(&self) -> Vec<usize> {
        (0..self.touched.len())
            .filter(|&i| {
                let want = if self.touched[i] {
                    PageState::Present
                } else {
                    PageState::Swapped
                };
                self.states[i] != want
            })
            .collect()
    }
}

/// What the guests did before the measured pass, to bound its fast-only
/// walk stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GuestPages {
    /// Guest data pages, all present in the memcg: each must be asked.
    mapped: u64,
    /// 4 KiB pages the guests touched: each must be answered young.
    touched: u64,
    /// Pages of the folios they touched (a THP KVM maps with a 2 MiB
    /// SPTE answers young for all its pages).
    touched_folios: u64,
    /// VMs (each adds its code page and page-table pages).
    vms: u64,
}

/// One round: the maps of every scenario and the pass's walk stats.
struct Round {
    maps: Vec<Map>,
    walk: WalkStats,
    guests: GuestPages,
}

/// `bits` as ranges `a-b` (inclusive), comma separated.
fn ranges(bits: &[bool]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bits.len() {
        if bits[i] {
            let s = i;
            while i + 1 < bits.len() && bits[i + 1] {
                i += 1;
            }
            out.push(if s == i {
                s.to_string()
            } else {
                format!("{s}-{i}")
            });
        }
        i += 1;
    }
    out.join(",")
}

/// Parses what [`ranges`] writes: sorted, disjoint `a` or `a-b` (`a < b`).
fn parse_ranges(s: &str) -> Result<Vec<(usize, usize)>> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    if s.is_empty() {
        return Ok(out);
    }
    for tok in s.split(',') {
        let num = |x: &str| -> Result<usize> {
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                bail!("bad page number {x:?} in {tok:?}");
            }
            x.parse().with_context(|| format!("page number {x:?}"))
        };
        let (a, b) = match tok.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(tok)?, num(tok)?),
        };
        if a > b || (tok.contains('-') && a == b) {
            bail!("bad range {tok:?}");
        }
        if out.last().is_some_and(|&(_, e)| a <= e + 1) {
            bail!("range {tok:?} is not after the previous one (unsorted or overlapping)");
        }
        out.push((a, b));
    }
    Ok(out)
}

/// The pages of valid [`ranges`] text (validated when loaded).
fn pages_of(s: &str) -> Vec<usize> {
    parse_ranges(s)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|(a, b)| a..=b)
        .collect()
}

/// How two range texts differ: page counts and the first page in one only.
fn describe_difference(a: &str, b: &str) -> String {
    let (pa, pb) = (pages_of(a), pages_of(b));
    let first = pa
        .iter()
        .zip(&pb)
        .find(|(x, y)| x != y)
        .map(|(x, y)| *x.min(y))
        .or_else(|| pa.get(pb.len()).or(pb.get(pa.len())).copied());
    format!(
        "{} vs {} pages, first difference at page {}",
        pa.len(),
        pb.len(),
        first.map_or("?".into(), |p| p.to_string())
    )
}

/// Compares this run's maps (`caps_0x7`, and `caps_0xf` on the series,
/// each of which must be there) and touched pages with the reference's:
/// the same non-empty set of scenarios, the same inputs, the same pages
/// promoted. Returns a diagnostic per matching map.
fn compare(
    r: &Reference,
    touched: &Maps,
    have: &BTreeMap<&str, Maps>,
    labels: &[&str],
) -> Result<Vec<String>> {
    let k = &r.kernel;
    let names = |m: &Maps| m.keys().cloned().collect::<Vec<_>>();
    if touched.keys().ne(r.touched.keys()) {
        bail!(
            "other scenarios than {k}'s: {:?} here, {:?} there (a reference from another \
             version of this test?)",
            names(touched),
            names(&r.touched)
        );
    }
    let mut bad = Vec::new();
    for (name, t) in touched {
        if *t != r.touched[name] {
            bad.push(format!(
                "{name}: other pages touched than on {k} ({}): another version of this test?",
                describe_difference(t, &r.touched[name])
            ));
        }
    }
    let mut same = Vec::new();
    for label in labels {
        let Some(m) = have.get(label) else {
            bad.push(format!(
                "this run has no {label} maps (its round failed above)"
            ));
            continue;
        };
        if m.keys().ne(r.maps.keys()) {
            bad.push(format!(
                "{label}: scenarios {:?}, {k}'s {:?}",
                names(m),
                names(&r.maps)
            ));
            continue;
        }
        for (name, v) in m {
            if *v == r.maps[name] {
                same.push(format!("{label} {name}: same pages as {k}"));
            } else {
                bad.push(format!(
                    "{label} {name}: other pages promoted than on {k} (here {})",
                    describe_difference(v, &r.maps[name])
                ));
            }
        }
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(same)
}

/// A feature the kernel lacks: SKIP on a kernel `scripts/vm-run` did not
/// boot; FAIL under it, where every flavour has it.
fn lacks(what: &str) -> ! {
    Ktap::lacks(&format!("no {what}"))
}

/// Turns swap on `SWAP_DEV` on unless some swap is on; returns whether it
/// did (and is to turn it off).
fn swap_on() -> Result<bool> {
    if sys::read("/proc/swaps")?.lines().count() > 1 {
        return Ok(false);
    }
    if !features::exists(SWAP_DEV) {
        lacks(&format!("swap and no {SWAP_DEV} (CONFIG_BLK_DEV_RAM)"));
    }
    for cmd in ["mkswap", "swapon"] {
        let out = Command::new(cmd)
            .arg(SWAP_DEV)
            .output()
            .with_context(|| format!("running {cmd}"))?;
        if !out.status.success() {
            bail!("{cmd} {SWAP_DEV}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(true)
}

fn swap_off(ours: bool) {
    if ours {
        let _ = Command::new("swapoff").arg(SWAP_DEV).status();
    }
}

/// The walk stat `letter` (printed upper case) of a pass.
fn counter(w: &WalkStats, letter: char) -> Result<u64> {
    w.get(letter).with_context(|| {
        format!(
            "lru_gen_full lacks walk stat {}: {:?}",
            letter.to_ascii_uppercase(),
            w.counters
        )
    })
}

/// The fast-only walk stats of a pass on the series: with 0x8 set (`fast`)
/// calls were made (C), every guest page was asked (Q), the touched ones
/// were answered young and little else (S), and none failed (E, with the
/// TDP MMU and no nested guest); with 0x8 clear, no call at all.
fn check_walk(w: &WalkStats, g: &GuestPages, fast: bool) -> Result<()> {
    let (c, q, s, e) = (
        counter(w, 'c')?,
        counter(w, 'q')?,
        counter(w, 's')?,
        counter(w, 'e')?,
    );
    if !fast {
        if (c, q, s, e) != (0, 0, 0, 0) {
            bail!("with 0x8 clear the pass made fast-only calls: C={c} Q={q} S={s} E={e}");
        }
        return Ok(());
    }
    let most = g.touched_folios + SLACK_PER_VM * g.vms;
    let mut bad = Vec::new();
    if c == 0 {
        bad.push("no fast-only call (C=0)".to_string());
    }
    if q < g.mapped {
        bad.push(format!("Q={q} pages asked for {} guest pages", g.mapped));
    }
    if s < g.touched || s > most {
        bad.push(format!(
            "S={s} young answers, expected {}..={most} for {} touched guest pages \
             ({} in touched folios, {} VMs)",
            g.touched, g.touched, g.touched_folios, g.vms
        ));
    }
    if e != 0 {
        bad.push(format!("E={e} failed answers with the TDP MMU only"));
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(())
}

/// One round of all four scenarios with the capability mask `mask`.
fn round(cg: &Memcg, mask: u32) -> Result<Round> {
    features::set_lru_gen_caps(mask)?;
    let mut guest = TouchVm::new(VM_BYTES, 1, Backing::Anon4k)?;
    let mut host = HostMem::new(HOST_BYTES, Backing::Anon4k)?;
    let mut mixed = TouchVm::new(VM_BYTES, 1, Backing::Anon4k)?;
    let mut thp = TouchVm::new(THP_BYTES, 1, Backing::Thp)?;
    let mut edges = TouchVm::new(EDGE_BYTES, 1, Backing::Anon4k)?;
    madvise(&edges.mem, Edges::DONTFORK, libc::MADV_DONTFORK)?;
    madvise(&edges.mem, Edges::MTHP, libc::MADV_HUGEPAGE)?;
    let (gp, hp, mp, tp, ep) = (
        guest.mem.pages(),
        host.pages(),
        mixed.mem.pages(),
        thp.mem.pages(),
        edges.mem.pages(),
    );
    // Fault everything in through the path each scenario uses later, with
    // data in every page: an all-zero subpage of a THP split at eviction
    // would be remapped to the shared zero page and look present.
    guest.touch_all(0, gp, Access::Write(1))?;
    host.fill(2);
    mixed.touch_all(0, mp, Access::Write(3))?;
    thp.touch_all(0, tp, Access::Write(5))?;
    // Through one memslot still, hole included: then the pieces.
    edges.touch_all(0, ep, Access::Write(11))?;
    edges.set_data_slots(&[Edges::SLOT_A, Edges::SLOT_B])?;
    // The only THPs of the process (the rest is MADV_NOHUGEPAGE).
    sys::expect_thp_backed(THP_BYTES, "the THP guest's memory")?;
    expect_mthp(&edges.mem, "the edge guest's mTHP range")?;
    // The last pages faulted in wait in per-CPU batches, off the LRU lists,
    // where aging and eviction cannot see them.
    sys::drain_lru_batches()?;
    aging::age_once(cg)?;
    aging::age_once(cg)?;

    let g_touched: Vec<bool> = (0..gp).map(|i| i % 3 == 0).collect();
    guest.touch(0, 0, gp.div_ceil(3), 3, Access::Read)?;
    let h_touched: Vec<bool> = (0..hp).map(|i| i % 4 == 1).collect();
    for i in (1..hp).step_by(4) {
        host.write_at(i * PAGE_SIZE, &[7])?;
    }
    // Mixed: the guest reads even pages, the host writes every fifth.
    mixed.touch(0, 0, mp.div_ceil(2), 2, Access::Read)?;
    for i in (0..mp).step_by(5) {
        mixed.mem.write_at(i * PAGE_SIZE, &[9])?;
    }
    let m_touched: Vec<bool> = (0..mp).map(|i| i % 2 == 0 || i % 5 == 0).collect();
    // THP: one 4 KiB page of some folios; the whole folio counts.
    for &p in &THP_TOUCHED {
        thp.touch(0, p, 1, 1, Access::Read)?;
    }
    let t_touched: Vec<bool> = (0..tp)
        .map(|i| {
            THP_TOUCHED
                .iter()
                .any(|&p| p / HUGE_PAGES == i / HUGE_PAGES)
        })
        .collect();
    // Edges: the guest page by page (gaps of one or two pages between
    // most), the host the hole's odd pages.
    for i in (0..ep).filter(|&i| Edges::guest_touched(i)) {
        edges.touch(0, i, 1, 1, Access::Read)?;
    }
    for i in (0..ep).filter(|&i| Edges::host_touched(i)) {
        edges.mem.read_u32_at(i * PAGE_SIZE)?;
    }
    let e_touched: Vec<bool> = (0..ep).map(Edges::promoted).collect();
    let e_guest: Vec<bool> = (0..ep).map(Edges::guest_touched).collect();
    let count = |v: &[bool]| v.iter().filter(|&&b| b).count() as u64;
    let e_guest_folios = (0..ep)
        .filter(|&i| e_touched[i] && !Edges::host_touched(i))
        .count() as u64;
    let guests = GuestPages {
        mapped: (gp + mp + tp) as u64 + (Edges::SLOT_A.1 + Edges::SLOT_B.1) as u64,
        touched: count(&g_touched)
            + mp.div_ceil(2) as u64
            + THP_TOUCHED.len() as u64
            + count(&e_guest),
        touched_folios: count(&g_touched)
            + mp.div_ceil(2) as u64
            + count(&t_touched)
            + e_guest_folios,
        vms: 4,
    };

    let (seq, _) = aging::age_once(cg)?;
    let walk = lru_gen::node_full_of(&cg.path(), NID)?
        .gen(seq)
        .and_then(|g| g.walk.clone())
        .with_context(|| format!("lru_gen_full has no walk stats for generation {seq}"))?;
    // Still THPs: the pass promoted (or not) whole 2 MiB folios; the same
    // for the 64 KiB ones.
    sys::expect_thp_backed(THP_BYTES, "the THP guest's memory after the pass")?;
    expect_mthp(&edges.mem, "the edge guest's mTHP range after the pass")?;
    // Controls: untouched pages that the guests touch only now, after the
    // pass. Then the VMs' memslots go (KVM zaps its SPTEs), so that eviction
    // cannot ask KVM (its folio_referenced() and look-around would keep a
    // page young there: a page the pass missed would look promoted). The
    // controls, promoted by nothing, must then be evicted like any other
    // untouched page; they are in the maps as untouched.
    for i in (1..gp).step_by(3).step_by(61) {
        guest.touch(0, i, 1, 1, Access::Read)?;
    }
    for i in (1..mp).step_by(2).filter(|i| i % 5 != 0).step_by(61) {
        mixed.touch(0, i, 1, 1, Access::Read)?;
    }
    thp.touch(0, THP_CONTROL, 1, 1, Access::Read)?;
    for i in (0..ep)
        .filter(|&i| !e_touched[i] && !Edges::in_range(i, Edges::HOLE))
        .step_by(97)
    {
        edges.touch(0, i, 1, 1, Access::Read)?;
    }
    guest.set_data_slot(false)?;
    mixed.set_data_slot(false)?;
    thp.set_data_slot(false)?;
    edges.delete_data_slots(2)?;
    let id = cg.lru_gen_id()?;
    lru_gen::evict(id, NID, seq - 1, 200, 1 << 30)
        .with_context(|| format!("evicting generations up to {}", seq - 1))?;
    let mut maps = Vec::new();
    for (name, ptr, n, touched) in [
        ("guest_every_3rd", guest.mem.as_ptr(), gp, g_touched),
        ("host_every_4th", host.as_ptr(), hp, h_touched),
        (
            "guest_even_host_every_5th",
            mixed.mem.as_ptr(),
            mp,
            m_touched,
        ),
        ("guest_thp_one_page_per_2m", thp.mem.as_ptr(), tp, t_touched),
        ("guest_edges", edges.mem.as_ptr(), ep, e_touched),
    ] {
        maps.push(Map {
            name,
            touched,
            states: pagemap::states(ptr as usize, n)?,
        });
    }
    Ok(Round { maps, walk, guests })
}

fn check(t: &Ktap, label: &str, maps: &[Map]) -> Result<()> {
    let mut bad = Vec::new();
    for m in maps {
        let mis = m.mismatches();
        let n = m.touched.len();
        let touched = m.touched.iter().filter(|&&b| b).count();
        t.diag(&format!(
            "{label} {}: {touched}/{n} touched, {} present, {} swapped, {} mismatch(es)",
            m.name,
            m.count(PageState::Present),
            m.count(PageState::Swapped),
            mis.len()
        ));
        if !mis.is_empty() {
            let lost = mis.iter().filter(|&&i| m.touched[i]).count();
            bad.push(format!(
                "{}: {lost} touched page(s) not promoted, {} untouched page(s) not swapped \
                 out (first at page {}: {})",
                m.name,
                mis.len() - lost,
                mis[0],
                if m.touched[mis[0]] {
                    "touched"
                } else {
                    "untouched"
                }
            ));
        }
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(())
}

/// The verdict on one round: exact maps and, on the series (`walk` is
/// `Some(0x8 set)`), the fast-only walk stats.
fn verdict(t: &Ktap, label: &str, r: &Round, walk: Option<bool>) -> Result<()> {
    let exact = check(t, label, &r.maps);
    let stats = walk.map_or(Ok(()), |fast| {
        t.diag(&format!(
            "{label} walk stats {:?}; guests: {:?}",
            r.walk.counters, r.guests
        ));
        check_walk(&r.walk, &r.guests, fast)
    });
    match (exact, stats) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(a), Ok(())) => Err(a),
        (Ok(()), Err(b)) => Err(b.context("walk stats")),
        (Err(a), Err(b)) => bail!("{a:#}; walk stats: {b:#}"),
    }
}

/// A 0x8 round with every fast-only answer shifted by one page (the young
/// bit of page i reported for page i + 1, `lru_gen_probe mode=shift`) must
/// fail, in both 4 KiB scenarios that only a guest touched: this test sees an
/// off-by-one in a secondary MMU's answer or in the walk's use of it.
fn shifted_answers_caught(t: &Ktap, cg: &Memcg) -> Result<()> {
    let probe = Probe::load(Mode::Shift)?;
    let r = round(cg, CAPS_0XF);
    let shifted = probe.stat("shifted")?;
    probe.unload()?;
    let r = r?;
    t.diag(&format!("{shifted} fast-only answers shifted by one page"));
    if shifted == 0 {
        bail!("the probe shifted no fast-only answer: the round made no batched call");
    }
    if let Err(e) = check(t, "0x8 set, answers shifted", &r.maps) {
        t.diag(&format!("caught: {e:#}"));
    }
    let missed: Vec<&str> = r
        .maps
        .iter()
        .filter(|m| {
            ["guest_every_3rd", "guest_edges"].contains(&m.name) && m.mismatches().is_empty()
        })
        .map(|m| m.name)
        .collect();
    if !missed.is_empty() {
        bail!("with answers shifted by one page, {missed:?} still matched exactly");
    }
    // The mismatches are the shift's: in guest_every_3rd (touched: every
    // third page) nearly every touched page lost its promotion to the next.
    let g = r
        .maps
        .iter()
        .find(|m| m.name == "guest_every_3rd")
        .context("no guest_every_3rd map")?;
    let mis = g.mismatches();
    let touched = g.touched.iter().filter(|&&b| b).count();
    let lost_to_next = mis
        .iter()
        .filter(|&&i| {
            g.touched[i] && i + 1 < g.touched.len() && !g.touched[i + 1] && mis.contains(&(i + 1))
        })
        .count();
    if (lost_to_next as f64) < 0.9 * touched as f64 {
        bail!(
            "guest_every_3rd: only {lost_to_next} of {touched} touched pages lost their promotion \
             to the next page: the mismatches are not the shift's"
        );
    }
    Ok(())
}

fn main() {
    // Options first, the --compare file included (clap's value parser): a
    // bad one is a usage error before anything is touched.
    let o = Opts::parse();
    // The maps go to a temporary file beside --map-out, renamed over it
    // only once they are complete: a run that skips or fails leaves an
    // earlier good file alone.
    let mut map_out = o.map_out.as_ref().map(|p| {
        let tmp = p.with_extension("json.tmp");
        match std::fs::File::create(&tmp) {
            Ok(f) => (p.clone(), tmp, f),
            Err(e) => {
                eprintln!("error: --map-out {}: {e}", p.display());
                std::process::exit(2);
            }
        }
    });
    // Every skip is decided before the plan; a set-up step that fails is
    // a failure (Bail out!).
    if !features::exists("/dev/kvm") {
        lacks("/dev/kvm");
    }
    if !features::exists(features::LRU_GEN_ENABLED) || !features::exists(lru_gen::LRU_GEN_DEBUGFS) {
        lacks("MGLRU (CONFIG_LRU_GEN, debugfs)");
    }
    let no_0x8 = match features::has_secondary_mmu_walk()
        .and_then(|h| features::series_feature(h, "lru_gen capability 0x8"))
    {
        Ok(r) => r,
        Err(e) => Ktap::bail_out(&format!("{e:#}")),
    };
    let series = no_0x8.is_none();
    let swap_ours = match swap_on() {
        Ok(v) => v,
        Err(e) => Ktap::bail_out(&format!("no swap to evict to: {e:#}")),
    };
    let (guard, cg) = match aging::enter_sandbox(MEMCG) {
        Ok(v) => v,
        Err(e) => {
            swap_off(swap_ours);
            Ktap::bail_out(&format!("no memcg/lru_gen to test with: {e:#}"))
        }
    };

    let mthp = MthpGuard::enable().unwrap_or_else(|e| {
        swap_off(swap_ours);
        Ktap::bail_out(&format!("cannot enable 64 KiB mTHP: {e:#}"))
    });
    let planned = 4 + usize::from(o.compare.is_some()) + usize::from(map_out.is_some());
    let mut t = Ktap::new(planned);
    let kernel = features::kernel_release().unwrap_or_default();
    t.diag(&format!("kernel {kernel}"));
    let mut have: BTreeMap<&str, Maps> = BTreeMap::new();
    let mut touched = Maps::new();
    let mut record = |label: &'static str, r: &Round| {
        for m in &r.maps {
            touched.insert(m.name.into(), ranges(&m.touched));
        }
        let v = r
            .maps
            .iter()
            .map(|m| (m.name.to_string(), ranges(&m.present())))
            .collect();
        have.insert(label, v);
    };
    let watch = sys::DmesgWatch::start().ok();
    match round(&cg, CAPS_0X7) {
        Ok(r) => {
            let v = verdict(&t, "0x8 clear", &r, series.then_some(false));
            record("caps_0x7", &r);
            t.check("exact_promotion_0x8_clear", v);
        }
        Err(e) => t.fail("exact_promotion_0x8_clear", &format!("{e:#}")),
    }
    match &no_0x8 {
        None => match round(&cg, CAPS_0XF) {
            Ok(r) => {
                let v = verdict(&t, "0x8 set", &r, Some(true));
                record("caps_0xf", &r);
                t.check("exact_promotion_0x8_set", v);
            }
            Err(e) => t.fail("exact_promotion_0x8_set", &format!("{e:#}")),
        },
        Some(why) => t.skip("exact_promotion_0x8_set", why),
    }
    match &no_0x8 {
        None => {
            t.check(
                "answers_shifted_by_one_page_are_caught",
                shifted_answers_caught(&t, &cg),
            );
        }
        Some(why) => t.skip("answers_shifted_by_one_page_are_caught", why),
    }
    if let Some(r) = &o.compare {
        let labels: &[&str] = if series {
            &["caps_0x7", "caps_0xf"]
        } else {
            &["caps_0x7"]
        };
        let res = compare(r, &touched, &have, labels).map(|same| {
            for line in same {
                t.diag(&line);
            }
        });
        t.check("same_pages_promoted_as_reference_kernel", res);
    }
    if let Some((path, tmp, f)) = map_out.as_mut() {
        let mut v = json!({ "kernel": kernel, "touched": touched });
        for (label, m) in &have {
            v[*label] = json!(m);
        }
        let text = serde_json::to_string_pretty(&v).expect("maps serialize") + "\n";
        // Unbuffered: a failed write(2) (ENOSPC, EIO) is seen here.
        let res = std::io::Write::write_all(f, text.as_bytes())
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&*tmp, &*path))
            .with_context(|| format!("writing {}", path.display()));
        if res.is_ok() {
            t.diag(&format!("maps written to {}", path.display()));
        }
        t.check("promotion_maps_written", res);
    }
    match watch {
        Some(w) => {
            t.check("no_kernel_warnings", w.expect_clean());
        }
        None => t.fail("no_kernel_warnings", "cannot read the kernel log"),
    }
    drop(mthp);
    swap_off(swap_ours);
    drop(cg);
    drop(guard);
    t.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_compress_runs() {
        assert_eq!(
            ranges(&[true, true, false, true, false, true, true, true]),
            "0-1,3,5-7"
        );
        assert_eq!(ranges(&[false, false]), "");
        assert_eq!(ranges(&[true]), "0");
    }

    #[test]
    fn ranges_parse_back() {
        let bits = [true, true, false, true, false, true, true, true, false];
        let r = parse_ranges(&ranges(&bits)).unwrap();
        assert_eq!(r, vec![(0, 1), (3, 3), (5, 7)]);
        assert_eq!(pages_of("0-1,3,5-7"), vec![0, 1, 3, 5, 6, 7]);
        assert!(parse_ranges("").unwrap().is_empty());
        for bad in [
            "x", "1-", "-1", "3-1", "2-2", "1,1", "1-3,2", "1-3,4", "1,,2", "1 ", "+1",
        ] {
            assert!(parse_ranges(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn differences_described() {
        assert_eq!(
            describe_difference("0-3", "0-1,3"),
            "4 vs 3 pages, first difference at page 2"
        );
        assert_eq!(
            describe_difference("0-1", "0-2"),
            "2 vs 3 pages, first difference at page 2"
        );
    }

    const BASE: &str = r#"{"kernel": "6.12.117-base",
        "touched": {"a": "0,2", "b": "1"},
        "caps_0x7": {"a": "0,2", "b": "1"}}"#;

    #[test]
    fn reference_validated() {
        let r = Reference::parse(BASE).unwrap();
        assert_eq!(r.kernel, "6.12.117-base");
        assert_eq!(r.maps["b"], "1");
        for (bad, why) in [
            ("", "not JSON"),
            ("[1]", "kernel"),
            (
                r#"{"caps_0x7": {"a": "1"}, "touched": {"a": "1"}}"#,
                "kernel",
            ),
            (r#"{"kernel": 7}"#, "kernel"),
            (r#"{"kernel": ""}"#, "kernel"),
            (
                r#"{"kernel": "6.12.117-mglru-secondary", "caps_0x7": {"a": "1"},
                    "touched": {"a": "1"}}"#,
                "series",
            ),
            (r#"{"kernel": "k", "touched": {"a": "1"}}"#, "caps_0x7"),
            (
                r#"{"kernel": "k", "caps_0x7": {}, "touched": {"a": "1"}}"#,
                "no scenario",
            ),
            (
                r#"{"kernel": "k", "caps_0x7": {"a": 1}, "touched": {"a": "1"}}"#,
                "not a string",
            ),
            (
                r#"{"kernel": "k", "caps_0x7": {"a": "2,1"}, "touched": {"a": "1"}}"#,
                "caps_0x7.a",
            ),
            (r#"{"kernel": "k", "caps_0x7": {"a": "1"}}"#, "touched"),
            (
                r#"{"kernel": "k", "caps_0x7": {"a": "1"}, "touched": {"b": "1"}}"#,
                "different scenarios",
            ),
        ] {
            let e = format!("{:#}", Reference::parse(bad).unwrap_err());
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(parse_reference("/nonexistent/base.json")
            .unwrap_err()
            .contains("reading /nonexistent/base.json"));
    }

    fn maps(v: &[(&str, &str)]) -> Maps {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn comparison_needs_the_same_scenarios_inputs_and_pages() {
        let r = Reference::parse(BASE).unwrap();
        let t = maps(&[("a", "0,2"), ("b", "1")]);
        let same = maps(&[("a", "0,2"), ("b", "1")]);
        let both: BTreeMap<&str, Maps> = [("caps_0x7", same.clone()), ("caps_0xf", same.clone())]
            .into_iter()
            .collect();
        let ok = compare(&r, &t, &both, &["caps_0x7", "caps_0xf"]).unwrap();
        assert_eq!(ok.len(), 4);
        // A round that failed left no maps: not a pass.
        let only = [("caps_0x7", same.clone())].into_iter().collect();
        let e = compare(&r, &t, &only, &["caps_0x7", "caps_0xf"]).unwrap_err();
        assert!(format!("{e}").contains("no caps_0xf maps"), "{e}");
        assert!(compare(&r, &t, &only, &["caps_0x7"]).is_ok());
        // A scenario missing here, or one more.
        let fewer = [("caps_0x7", maps(&[("a", "0,2")]))].into_iter().collect();
        assert!(compare(&r, &t, &fewer, &["caps_0x7"]).is_err());
        let more = [("caps_0x7", maps(&[("a", "0,2"), ("b", "1"), ("c", "")]))]
            .into_iter()
            .collect();
        assert!(compare(&r, &t, &more, &["caps_0x7"]).is_err());
        // Other inputs, or other scenarios touched.
        let e = compare(&r, &maps(&[("a", "0"), ("b", "1")]), &only, &["caps_0x7"]).unwrap_err();
        assert!(format!("{e}").contains("other pages touched"), "{e}");
        assert!(compare(&r, &maps(&[("a", "0,2")]), &only, &["caps_0x7"]).is_err());
        // Other pages promoted.
        let other = [("caps_0x7", maps(&[("a", "0-2"), ("b", "1")]))]
            .into_iter()
            .collect();
        let e = compare(&r, &t, &other, &["caps_0x7"]).unwrap_err();
        assert!(format!("{e}").contains("first difference at page 1"), "{e}");
    }

    fn walk(c: u64, q: u64, s: u64, e: u64) -> WalkStats {
        let toks = [
            "100t".to_string(),
            "10y".into(),
            "0f".into(),
            "0a".into(),
            format!("{c}c"),
            format!("{q}q"),
            format!("{s}s"),
            format!("{e}e"),
        ];
        WalkStats::parse(&toks.iter().map(String::as_str).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn edges_layout() {
        let pages = EDGE_BYTES / PAGE_SIZE;
        // mTHP folios are promoted whole or not at all, and some are not.
        let heads: Vec<usize> = (Edges::MTHP.0..Edges::MTHP.0 + Edges::MTHP.1)
            .step_by(MTHP_PAGES)
            .collect();
        for &h in &heads {
            let n = (h..h + MTHP_PAGES).filter(|&i| Edges::promoted(i)).count();
            assert!(n == 0 || n == MTHP_PAGES, "folio at {h}: {n} pages");
        }
        assert!(heads.iter().any(|&h| !Edges::promoted(h)));
        assert!(heads.iter().any(|&h| Edges::promoted(h)));
        // The guest never touches the hole; the host touches some of it,
        // not its first page (right after memslot A's touched last page).
        assert!((0..pages).all(|i| !(Edges::guest_touched(i) && Edges::host_touched(i))));
        assert!(!Edges::promoted(Edges::HOLE.0));
        assert!(Edges::guest_touched(Edges::HOLE.0 - 1));
        assert!(Edges::promoted(Edges::HOLE.0 + 1));
        // Shifting the guest's answers by one page changes the map at both
        // memslot edges and at hundreds of pages in all.
        for e in [Edges::SLOT_A.1 - 1, Edges::SLOT_B.0] {
            assert!(
                Edges::guest_touched(e) && !Edges::promoted(e + 1),
                "edge {e}"
            );
        }
        let moved = (0..pages - 1)
            .filter(|&i| Edges::guest_touched(i) && !Edges::promoted(i + 1))
            .count();
        assert!(moved > 400, "{moved}");
        // Most pages untouched, so eviction has something to prove.
        let n = (0..pages).filter(|&i| Edges::promoted(i)).count();
        assert!(n > pages / 5 && n < pages / 2, "{n} of {pages} promoted");
    }

    #[test]
    fn walk_stats_bounded() {
        let g = GuestPages {
            mapped: 6144,
            touched: 1709,
            touched_folios: 2731,
            vms: 3,
        };
        assert!(check_walk(&walk(0, 0, 0, 0), &g, false).is_ok());
        assert!(check_walk(&walk(1, 0, 0, 0), &g, false).is_err());
        assert!(check_walk(&walk(0, 0, 0, 1), &g, false).is_err());
        assert!(check_walk(&walk(20, 7000, 1709, 0), &g, true).is_ok());
        assert!(check_walk(&walk(20, 7000, 2731 + 24, 0), &g, true).is_ok());
        assert!(check_walk(&walk(0, 7000, 1709, 0), &g, true).is_err());
        assert!(check_walk(&walk(20, 6143, 1709, 0), &g, true).is_err());
        assert!(check_walk(&walk(20, 7000, 1708, 0), &g, true).is_err());
        assert!(check_walk(&walk(20, 7000, 2731 + 25, 0), &g, true).is_err());
        assert!(check_walk(&walk(20, 7000, 1709, 1), &g, true).is_err());
        // Unpatched 6.12 prints no fast-only counters.
        let old = WalkStats::parse(&["5t", "2y", "0f", "0a"]).unwrap();
        assert!(check_walk(&old, &g, false).is_err());
    }
}
