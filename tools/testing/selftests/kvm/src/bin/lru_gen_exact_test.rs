// SPDX-License-Identifier: GPL-2.0
//! lru_gen_exact_test: which pages does one aging pass promote, page by
//! page, on deterministic inputs?
//!
//! Three scenarios in one memcg: a KVM guest touching every third page of
//! its memory through the TDP MMU only; the host touching every fourth page
//! of an anonymous range; a guest and the host touching interleaved pages of
//! one VM's memory. Everything is made old (two passes), the touches run,
//! one pass ages, and then every generation older than the one the pass
//! filled is evicted to swap: a page is still present afterwards exactly
//! when the pass promoted it. The map of present pages must equal the map
//! of touched pages. Before the eviction the VMs' memslots are deleted, so
//! that eviction cannot consult KVM's accessed bits (it would keep a page
//! the pass missed but the guest touched); untouched control pages the
//! guests touch only after the pass show that this works: they must be
//! evicted. It is printed (and written with `--map-out`) so that
//! `make check-base` can compare unpatched 6.12 with the series (0x8 clear,
//! and set) page by page.
//!
//! Runs on any 6.12 kernel with MGLRU, memcgs, KVM and swap on /dev/ram0.

use anyhow::{bail, Context, Result};
use clap::Parser;
use mglru_selftest::aging::{self, NID};
use mglru_selftest::features::{self, caps};
use mglru_selftest::ktap::Ktap;
use mglru_selftest::kvm::{Access, Backing, HostMem, TouchVm, PAGE_SIZE};
use mglru_selftest::memcg::Memcg;
use mglru_selftest::pagemap::{self, PageState};
use mglru_selftest::{lru_gen, sys};
use std::process::Command;

const SWAP_DEV: &str = "/dev/ram0";
const MEMCG: &str = "mglru-exact";
const VM_BYTES: usize = 8 << 20;
const HOST_BYTES: usize = 4 << 20;

/// Page-exact promotion maps of one aging pass on fixed inputs. Exit
/// status: 0 pass, 1 fail, 4 skip, 2 usage error.
#[derive(Parser, Debug)]
#[command(name = "lru_gen_exact_test", version, about, long_about = None)]
struct Opts {
    /// Write the maps as JSON to this file.
    #[arg(short = 'o', long = "map-out")]
    map_out: Option<std::path::PathBuf>,
    /// Compare with the maps another kernel wrote (`--map-out` of a run on
    /// unpatched 6.12): every map of this run must equal that kernel's
    /// 0x8-clear map, page by page.
    #[arg(short = 'c', long)]
    compare: Option<std::path::PathBuf>,
}

/// The 0x8-clear maps (`caps_0x7`) and kernel name of a `--map-out` file.
fn load_reference(path: &std::path::Path) -> Result<(String, serde_json::Value)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let kernel = v["kernel"].as_str().unwrap_or("?").to_owned();
    let maps = v
        .get("caps_0x7")
        .cloned()
        .with_context(|| format!("{} has no caps_0x7 maps", path.display()))?;
    Ok((kernel, maps))
}

/// A scenario's result: which pages were touched and which are present
/// after the pass and the eviction.
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

/// `present` as ranges `a-b` (inclusive), comma separated.
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

fn swap_on() -> Result<()> {
    if sys::read("/proc/swaps")?.lines().count() > 1 {
        return Ok(());
    }
    if !features::exists(SWAP_DEV) {
        bail!("{SWAP_DEV} missing (CONFIG_BLK_DEV_RAM)");
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
    Ok(())
}

/// One round of all three scenarios with the capability mask `mask`.
fn round(cg: &Memcg, mask: u32) -> Result<Vec<Map>> {
    features::set_lru_gen_caps(mask)?;
    let mut guest = TouchVm::new(VM_BYTES, 1, Backing::Anon4k)?;
    let host = HostMem::new(HOST_BYTES, Backing::Anon4k)?;
    let mut mixed = TouchVm::new(VM_BYTES, 1, Backing::Anon4k)?;
    let (gp, hp, mp) = (guest.mem.pages(), host.pages(), mixed.mem.pages());
    // Fault everything in through the path each scenario uses later.
    guest.touch_all(0, gp, Access::Write(1))?;
    host.fill(2);
    mixed.touch_all(0, mp, Access::Write(3))?;
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

    let (seq, _) = aging::age_once(cg)?;
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
    guest.set_data_slot(false)?;
    mixed.set_data_slot(false)?;
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
    ] {
        let (present, swapped) = state(ptr, n)?;
        maps.push(Map {
            name,
            touched,
            present,
            swapped,
        });
    }
    Ok(maps)
}

fn check(t: &mut Ktap, label: &str, maps: &[Map]) -> Result<()> {
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

fn main() {
    let o = Opts::parse();
    // Read the reference first: a bad --compare file changes nothing.
    let reference = match o.compare.as_deref().map(load_reference).transpose() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lru_gen_exact_test: --compare: {e:#}");
            std::process::exit(2);
        }
    };
    if !features::exists("/dev/kvm") {
        Ktap::skip_all("no /dev/kvm");
    }
    let (guard, cg) = match aging::enter_sandbox(MEMCG) {
        Ok(v) => v,
        Err(e) => Ktap::skip_all(&format!("no memcg/lru_gen to test with: {e:#}")),
    };
    if let Err(e) = swap_on() {
        Ktap::skip_all(&format!("no swap to evict to: {e:#}"));
    }
    let base_mask = caps::CORE | caps::MM_WALK | caps::NONLEAF_YOUNG;
    let series = match features::has_secondary_mmu_walk()
        .and_then(|h| features::series_feature(h, "lru_gen capability 0x8"))
    {
        Ok(None) => true,
        Ok(Some(_)) => false,
        Err(e) => {
            let mut t = Ktap::new(1);
            t.fail("kernel_has_0x8", &format!("{e:#}"));
            t.finish();
        }
    };
    let mut t = Ktap::new(if reference.is_some() { 4 } else { 3 });
    t.diag(&format!(
        "kernel {}",
        features::kernel_release().unwrap_or_default()
    ));
    let mut json = serde_json::Map::new();
    json.insert(
        "kernel".into(),
        features::kernel_release().unwrap_or_default().into(),
    );
    let mut record = |label: &str, maps: &[Map]| {
        let v: serde_json::Map<String, serde_json::Value> = maps
            .iter()
            .map(|m| (m.name.to_string(), ranges(&m.present).into()))
            .collect();
        json.insert(label.into(), v.into());
    };
    let watch = sys::DmesgWatch::start().ok();
    match round(&cg, base_mask) {
        Ok(m) => {
            let r = check(&mut t, "0x8 clear", &m);
            record("caps_0x7", &m);
            t.check("exact_promotion_0x8_clear", r);
        }
        Err(e) => t.fail("exact_promotion_0x8_clear", &format!("{e:#}")),
    }
    if series {
        match round(&cg, base_mask | caps::SECONDARY_MMU_WALK) {
            Ok(m) => {
                let r = check(&mut t, "0x8 set", &m);
                record("caps_0xf", &m);
                t.check("exact_promotion_0x8_set", r);
            }
            Err(e) => t.fail("exact_promotion_0x8_set", &format!("{e:#}")),
        }
    } else {
        t.skip(
            "exact_promotion_0x8_set",
            "not the series' kernel: no lru_gen capability 0x8",
        );
    }
    if let Some((kernel, want)) = &reference {
        let mut diffs = Vec::new();
        for label in ["caps_0x7", "caps_0xf"] {
            let Some(have) = json.get(label) else {
                continue;
            };
            for (name, v) in want.as_object().into_iter().flatten() {
                if have.get(name) != Some(v) {
                    diffs.push(format!(
                        "{label} {name}: {kernel} promoted {v}, this kernel {}",
                        have.get(name).unwrap_or(&serde_json::Value::Null)
                    ));
                } else {
                    t.diag(&format!("{label} {name}: same pages as {kernel}"));
                }
            }
        }
        let r = if diffs.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("{}", diffs.join("; ")))
        };
        t.check("same_pages_promoted_as_reference_kernel", r);
    }
    match watch {
        Some(w) => {
            t.check("no_kernel_warnings", w.expect_clean());
        }
        None => t.fail("no_kernel_warnings", "cannot read the kernel log"),
    }
    if let Some(path) = &o.map_out {
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(json)).unwrap();
        if let Err(e) = std::fs::write(path, text + "\n") {
            t.diag(&format!("writing {}: {e}", path.display()));
        }
    }
    let _ = Command::new("swapoff").arg(SWAP_DEV).status();
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
}
