// SPDX-License-Identifier: GPL-2.0
//! lru_gen_exact_test: which pages does one aging pass promote, page by
//! page, on deterministic inputs?
//!
//! Four scenarios in one memcg: a KVM guest touching every third page of
//! its memory through the TDP MMU only; the host touching every fourth page
//! of an anonymous range; a guest and the host touching interleaved pages of
//! one VM's memory; a guest whose memory is THPs (2 MiB folios, checked to
//! have formed) touching one 4 KiB page in some of them, where 6.12 promotes
//! the whole folio, not the page touched. Everything is made old (two
//! passes), the touches run, one pass ages, and then every generation older
//! than the one the pass filled is evicted to swap: a page is still present
//! afterwards exactly when the pass promoted it. The map of present pages
//! must equal the map of touched pages (of touched folios for the THPs).
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
/// Young fast-only answers one VM may add beyond the pages its guest
/// touched: its code page (the guest has no stack), with room to spare.
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
/// folio) and which are present after the pass and the eviction.
struct Map {
    name: &'static str,
    touched: Vec<bool>,
    present: Vec<bool>,
    swapped: usize,
}

impl Map {
    fn mismatches(&self) -> Vec<usize> {
        (0..self.touched.len())
            .filter(|&i| self.touched[i] != self.present[i])
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
    /// VMs (each adds its code page).
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
    match features::flavor() {
        Ok(None) => Ktap::skip_all(&format!("no {what}")),
        Ok(Some(f)) => Ktap::bail_out(&format!("the {f:?} flavour's kernel has no {what}")),
        Err(e) => Ktap::bail_out(&format!("{e:#}")),
    }
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
    let (gp, hp, mp, tp) = (
        guest.mem.pages(),
        host.pages(),
        mixed.mem.pages(),
        thp.mem.pages(),
    );
    // Fault everything in through the path each scenario uses later, with
    // data in every page: an all-zero subpage of a THP split at eviction
    // would be remapped to the shared zero page and look present.
    guest.touch_all(0, gp, Access::Write(1))?;
    host.fill(2);
    mixed.touch_all(0, mp, Access::Write(3))?;
    thp.touch_all(0, tp, Access::Write(5))?;
    // The only THPs of the process (the rest is MADV_NOHUGEPAGE).
    sys::expect_thp_backed(THP_BYTES, "the THP guest's memory")?;
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
    let count = |v: &[bool]| v.iter().filter(|&&b| b).count() as u64;
    let guests = GuestPages {
        mapped: (gp + mp + tp) as u64,
        touched: count(&g_touched) + mp.div_ceil(2) as u64 + THP_TOUCHED.len() as u64,
        touched_folios: count(&g_touched) + mp.div_ceil(2) as u64 + count(&t_touched),
        vms: 3,
    };

    let (seq, _) = aging::age_once(cg)?;
    let walk = lru_gen::node_full_of(&cg.path(), NID)?
        .gen(seq)
        .and_then(|g| g.walk.clone())
        .with_context(|| format!("lru_gen_full has no walk stats for generation {seq}"))?;
    // Still THPs: the pass promoted (or not) whole 2 MiB folios.
    sys::expect_thp_backed(THP_BYTES, "the THP guest's memory after the pass")?;
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
    guest.set_data_slot(false)?;
    mixed.set_data_slot(false)?;
    thp.set_data_slot(false)?;
    let id = cg.lru_gen_id()?;
    lru_gen::evict(id, NID, seq - 1, 200, 1 << 30)
        .with_context(|| format!("evicting generations up to {}", seq - 1))?;
    let state = |ptr: *mut u8, n: usize| -> Result<(Vec<bool>, usize)> {
        let s = pagemap::states(ptr as usize, n)?;
        Ok((
            s.iter().map(|&x| x == PageState::Present).collect(),
            s.iter().filter(|&&x| x == PageState::Swapped).count(),
        ))
    };
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
    ] {
        let (present, swapped) = state(ptr, n)?;
        maps.push(Map {
            name,
            touched,
            present,
            swapped,
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
            m.present.iter().filter(|&&b| b).count(),
            m.swapped,
            mis.len()
        ));
        if !mis.is_empty() {
            let lost = mis.iter().filter(|&&i| m.touched[i]).count();
            bad.push(format!(
                "{}: {lost} touched page(s) not promoted, {} untouched page(s) not evicted (first at page {})",
                m.name,
                mis.len() - lost,
                mis[0]
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
        Ktap::skip_all("no /dev/kvm");
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

    let planned = 3 + usize::from(o.compare.is_some()) + usize::from(map_out.is_some());
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
            .map(|m| (m.name.to_string(), ranges(&m.present)))
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
