// SPDX-License-Identifier: GPL-2.0
//! One measured run (`run`) and the smoke test (`smoke`).

use crate::host::{self, AgingSampler};
use crate::load::{Keyspace, Latencies, Rng};
use crate::memcache::Client;
use crate::qemu::{Guest, GuestConfig};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use mglru_selftest::features::{self, caps, CapsGuard};
use mglru_selftest::ktap::Ktap;
use mglru_selftest::memcg::{Memcg, CGROUP_ROOT};
use mglru_selftest::sys;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a run measures: the series with 0x8 set or clear, or the base
/// kernel's own aging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The series' kernel, capability 0x8 set (0x000f).
    On,
    /// The series' kernel, capability 0x8 clear (0x0007).
    Off,
    /// The pristine base kernel (FLAVOR=base), as it boots (0x0007).
    Base,
}

impl Mode {
    /// The name used in files and tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::On => "on",
            Mode::Off => "off",
            Mode::Base => "base",
        }
    }
}

const SWAP_DEV: &str = "/dev/ram0";
const NID_NOTE: &str = "node 0 (the test VM has one)";

/// Options of `run`.
#[derive(Args, Debug, Clone)]
pub struct RunOpts {
    /// Modes to run, one fresh guest each, in this order (on/off need the
    /// series' kernel, base the base kernel).
    #[arg(long, value_delimiter = ',', required = true)]
    pub modes: Vec<Mode>,
    /// Directory for the run files (run-ROUND-MODE.json).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Round number, recorded in the run files.
    #[arg(long, default_value_t = 1)]
    pub round: u32,
    /// Guest kernel (default: $SCENARIO_KERNEL, else the booted flavour's
    /// bzImage under $KDIR).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs (default: $MGLRU_BUILD_DIR/scenario-guest.cpio).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Guest RAM, MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(128..=4096))]
    pub guest_mem: u64,
    /// Hot set, MiB of values.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub hot: u64,
    /// Cold set, MiB of values.
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u64).range(1..=2048))]
    pub cold: u64,
    /// Value size, KiB.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=512))]
    pub value: u64,
    /// Share of requests that go to the hot set.
    #[arg(long, default_value_t = 0.9, value_parser = parse_open_share)]
    pub hot_share: f64,
    /// Share of requests that write (the rest read and check).
    #[arg(long, default_value_t = 0.05, value_parser = parse_share)]
    pub set_share: f64,
    /// Seconds of load before the measured phases.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub warm: u64,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub phase: u64,
    /// The limit phase's memory.max: the memcg's anonymous memory after
    /// warm-up (the guest's RAM and QEMU's heap; its file pages, QEMU's
    /// binary and the guest image, go first anyway) minus this many MiB
    /// (default: half the cold set).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub limit_cut: Option<u64>,
    /// The proactive phase reclaims this many MiB per period (the default,
    /// 2 MiB a second, asks for less than the cold set over a phase: idle
    /// memory, as hosts reclaim it).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub reclaim: u64,
    /// The proactive phase's period, ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60000))]
    pub reclaim_period: u64,
}

/// Options of `smoke`.
#[derive(Args, Debug, Clone)]
pub struct SmokeOpts {
    /// Guest kernel (default as for `run`).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs (default as for `run`).
    #[arg(long)]
    pub image: Option<PathBuf>,
}

/// Options of `guest-fill` (run inside the guest).
#[derive(Args, Debug, Clone)]
pub struct FillOpts {
    /// Keys in the hot set.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub hot_keys: u64,
    /// Keys in the cold set.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub cold_keys: u64,
    /// Bytes per value.
    #[arg(long)]
    pub value_bytes: usize,
    /// memcached's address.
    #[arg(long, default_value = "127.0.0.1:11211")]
    pub addr: String,
    /// Read every key back instead (checking that each value is the
    /// key's, of any version): brings the guest's memory back in.
    #[arg(long)]
    pub touch: bool,
}

/// `guest_scenario guest-fill`.
pub fn guest_fill(o: &FillOpts) -> Result<()> {
    let ks = Keyspace::new(o.hot_keys, o.cold_keys, o.value_bytes)?;
    let mut c = Client::connect(&o.addr, Duration::from_secs(60))?;
    let t = Instant::now();
    let ids: Vec<u64> = fill_order(&ks).collect();
    if o.touch {
        for chunk in ids.chunks(64) {
            let keys: Vec<String> = chunk.iter().map(|&id| Keyspace::key(id)).collect();
            let got = c.get_multi(&keys)?;
            if got.len() != keys.len() {
                bail!("{} of {} keys missing", keys.len() - got.len(), keys.len());
            }
            for (k, v) in &got {
                let id: u64 = k[1..].parse()?;
                if v.len() != ks.value_len || v[..8] != id.to_le_bytes() {
                    bail!("{k}: not the key's value");
                }
            }
        }
        println!(
            "read {} keys back in {:.1}s",
            ks.keys(),
            t.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    // Pipelined in chunks of about 1 MiB, each one write and one round
    // trip (memcached would otherwise wait for a reply per value).
    let per_chunk = ((1 << 20) / ks.value_len).max(1);
    for chunk in ids.chunks(per_chunk) {
        let vals: Vec<Vec<u8>> = chunk.iter().map(|&id| ks.value(id, 0)).collect();
        c.set_many_noreply(
            chunk
                .iter()
                .zip(&vals)
                .map(|(&id, v)| (Keyspace::key(id), &v[..])),
        )?;
    }
    let items = c
        .stat("curr_items")?
        .context("memcached's stats lack curr_items")?;
    if items != ks.keys() {
        bail!(
            "memcached holds {items} items after storing {} (out of item memory?)",
            ks.keys()
        );
    }
    println!(
        "filled {} keys in {:.1}s",
        ks.keys(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Cold keys first: they are the older memory in the guest.
fn fill_order(ks: &Keyspace) -> impl Iterator<Item = u64> {
    (ks.hot..ks.keys()).chain(0..ks.hot)
}

impl RunOpts {
    /// memcached's item memory for the data set: slab chunks for a value
    /// are up to 25 % larger (growth factor 1.25) plus item headers.
    pub fn memcached_mib(&self) -> u64 {
        (self.hot + self.cold) * 3 / 2 + 8
    }

    /// Checks what clap cannot check option by option.
    pub fn check(&self) -> Result<(), String> {
        let need = self.memcached_mib() + 64;
        if need > self.guest_mem {
            return Err(format!(
                "--hot {} --cold {} needs about {need} MiB of guest memory (memcached {} MiB, the guest's kernel 64), more than --guest-mem {}",
                self.hot,
                self.cold,
                self.memcached_mib(),
                self.guest_mem
            ));
        }
        for (i, m) in self.modes.iter().enumerate() {
            if self.modes[..i].contains(m) {
                return Err(format!(
                    "--modes names {} twice (one run file per mode and round)",
                    m.name()
                ));
            }
        }
        Ok(())
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{v} is not in 0..=1"));
    }
    Ok(v)
}

fn parse_open_share(s: &str) -> Result<f64, String> {
    let v = parse_share(s)?;
    if v == 0.0 || v == 1.0 {
        return Err(format!("{v} is not in (0, 1): both sets need requests"));
    }
    Ok(v)
}

fn default_kernel(k: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(k) = k {
        return Ok(k.clone());
    }
    if let Ok(k) = std::env::var("SCENARIO_KERNEL") {
        return Ok(k.into());
    }
    let kdir =
        std::env::var("KDIR").context("no --kernel and neither $SCENARIO_KERNEL nor $KDIR set")?;
    Ok(Path::new(&kdir).join("arch/x86/boot/bzImage"))
}

fn default_image(i: &Option<PathBuf>) -> PathBuf {
    if let Some(i) = i {
        return i.clone();
    }
    let dir = std::env::var("MGLRU_BUILD_DIR")
        .unwrap_or_else(|_| "/var/cache/mglru-secondary/build".into());
    Path::new(&dir).join("scenario-guest.cpio")
}

/// The loopback interface is down in the test VM (nothing configures
/// it); QEMU's port forward listens there.
fn ensure_loopback() -> Result<()> {
    let flags = sys::read_trimmed("/sys/class/net/lo/flags")
        .context("no loopback interface (CONFIG_NET, CONFIG_INET)")?;
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16)?;
    if flags & 1 != 0 {
        return Ok(());
    }
    for cmd in [
        &["ip", "link", "set", "lo", "up"][..],
        &["busybox", "ip", "link", "set", "lo", "up"],
    ] {
        if std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(());
        }
    }
    bail!("could not bring the loopback interface up (neither ip nor busybox ip worked)")
}

/// Swap on the RAM disk: the guest's memory is anonymous memory of QEMU,
/// which only swap can reclaim.
fn ensure_swap() -> Result<()> {
    if sys::read("/proc/swaps")?
        .lines()
        .any(|l| l.starts_with(SWAP_DEV))
    {
        return Ok(());
    }
    if !Path::new(SWAP_DEV).exists() {
        bail!("{SWAP_DEV} missing: the kernel config provides brd (CONFIG_BLK_DEV_RAM)");
    }
    for cmd in ["mkswap", "swapon"] {
        let out = std::process::Command::new(cmd)
            .arg(SWAP_DEV)
            .output()
            .with_context(|| format!("running {cmd}"))?;
        if !out.status.success() {
            bail!(
                "{cmd} {SWAP_DEV}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// The CPU QEMU runs on (the last online one) and the one the generator,
/// the reclaim loop and the sampler run on (the first); decided once,
/// before anything is pinned.
pub fn cpus() -> Result<(usize, usize)> {
    // SAFETY: sysconf() has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 2 {
        bail!("{n} CPU(s) online: the guest and the load generator need a CPU each");
    }
    Ok((n as usize - 1, 0))
}

/// Drops the page cache, so that every guest's QEMU charges the page
/// cache of its binary, libraries, kernel and image to its own memcg
/// (otherwise the first guest of a boot would carry clean file pages that
/// later ones find already cached and charged to a dead memcg).
fn drop_caches() -> Result<()> {
    sys::write("/proc/sys/vm/drop_caches", "3")
}

/// A fresh memcg for QEMU, refusing one that still has tasks (a QEMU left
/// over from a killed run).
fn fresh_memcg(name: &str) -> Result<Memcg> {
    let m = Memcg::create(name)?;
    let procs = m.read("cgroup.procs")?;
    if !procs.is_empty() {
        bail!(
            "memcg {name} still has tasks ({}): a left-over QEMU?",
            procs.replace('\n', " ")
        );
    }
    m.write("memory.max", "max")?;
    Ok(m)
}

/// What one phase of load saw.
#[derive(Debug, Default)]
struct Load {
    secs: f64,
    gets: u64,
    sets: u64,
    misses: u64,
    all: Latencies,
    hot: Latencies,
    cold: Latencies,
}

impl Load {
    fn ops(&self) -> u64 {
        self.gets + self.sets
    }

    fn json(&mut self) -> Value {
        let mut m = Map::new();
        m.insert("secs".into(), json!(self.secs));
        m.insert("ops".into(), json!(self.ops()));
        m.insert("gets".into(), json!(self.gets));
        m.insert("sets".into(), json!(self.sets));
        m.insert("misses".into(), json!(self.misses));
        m.insert(
            "throughput".into(),
            json!(self.ops() as f64 / self.secs.max(1e-9)),
        );
        for (name, l) in [
            ("all", &mut self.all),
            ("hot", &mut self.hot),
            ("cold", &mut self.cold),
        ] {
            m.insert(
                name.into(),
                json!({
                    "n": l.len(),
                    "p50_us": l.percentile(50.0),
                    "p99_us": l.percentile(99.0),
                    "max_us": l.max(),
                }),
            );
        }
        Value::Object(m)
    }
}

/// The closed-loop generator: requests for `secs`, every read checked.
struct Workload {
    ks: Keyspace,
    versions: Vec<u64>,
    rng: Rng,
    hot_share: f64,
    set_share: f64,
}

impl Workload {
    /// Fills memcached from inside the guest (`guest-fill` over the
    /// guest's loopback: QEMU's user-mode network under TCG carries tens of
    /// requests a second), then checks a sample of the values from here.
    fn fill(&mut self, guest: &mut Guest, c: &mut Client<TcpStream>) -> Result<()> {
        let ks = self.ks;
        let out = guest.control_timeout(
            &format!("fill {} {} {}", ks.hot, ks.cold, ks.value_len),
            Duration::from_secs(1800),
        )?;
        if !out.lines().any(|l| l == "rc=0") {
            bail!("guest-fill failed in the guest:\n{out}");
        }
        for _ in 0..16 {
            let id = self.rng.below(ks.keys());
            let data = c
                .get(&Keyspace::key(id))?
                .with_context(|| format!("key {id} missing after the fill"))?;
            ks.verify(id, 0, &data)?;
        }
        Ok(())
    }

    fn request(&mut self, c: &mut Client<TcpStream>, id: u64, load: &mut Load) -> Result<()> {
        let key = Keyspace::key(id);
        let write = self.rng.unit() < self.set_share;
        let t = Instant::now();
        if write {
            let v = self.versions[id as usize] + 1;
            c.set(&key, &self.ks.value(id, v))?;
            self.versions[id as usize] = v;
            load.sets += 1;
        } else {
            let got = c.get(&key)?;
            load.gets += 1;
            match got {
                Some(data) => self.ks.verify(id, self.versions[id as usize], &data)?,
                None => {
                    // Evicted by memcached (it ran out of item memory):
                    // counted, and stored again.
                    load.misses += 1;
                    c.set(&key, &self.ks.value(id, self.versions[id as usize]))?;
                }
            }
        }
        let us = t.elapsed().as_micros() as u64;
        load.all.push(us);
        if self.ks.is_hot(id) {
            load.hot.push(us);
        } else {
            load.cold.push(us);
        }
        Ok(())
    }

    fn run(&mut self, c: &mut Client<TcpStream>, secs: f64) -> Result<Load> {
        let mut load = Load::default();
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        while Instant::now() < end {
            let id = self.ks.pick(&mut self.rng, self.hot_share);
            self.request(c, id, &mut load)?;
        }
        load.secs = start.elapsed().as_secs_f64();
        Ok(load)
    }

    /// Reads `n` cold keys spread evenly over the cold set and checks
    /// them.
    fn read_cold(&mut self, c: &mut Client<TcpStream>, n: u64) -> Result<Load> {
        let mut load = Load::default();
        let start = Instant::now();
        let step = (self.ks.cold / n.max(1)).max(1);
        for id in (self.ks.hot..self.ks.keys()).step_by(step as usize) {
            let key = Keyspace::key(id);
            let t = Instant::now();
            let data = c.get(&key)?.with_context(|| format!("{key} missing"))?;
            self.ks.verify(id, self.versions[id as usize], &data)?;
            load.gets += 1;
            load.cold.push(t.elapsed().as_micros() as u64);
        }
        load.secs = start.elapsed().as_secs_f64();
        Ok(load)
    }
}

/// Counters read before and after a phase.
struct Snapshot {
    memcg: BTreeMap<String, u64>,
    vmstat: BTreeMap<String, u64>,
    guest: BTreeMap<String, u64>,
    qemu: (u64, u64),
    psi: (u64, u64),
}

impl Snapshot {
    fn take(memcg: &Memcg, guest: &mut Guest) -> Result<Self> {
        Ok(Self {
            memcg: host::parse_kv(&memcg.read("memory.stat")?)?,
            vmstat: host::parse_kv(&sys::read("/proc/vmstat")?)?,
            guest: host::parse_kv(&guest.control("vmstat")?)?,
            qemu: host::parse_proc_stat_times(&sys::read(format!("/proc/{}/stat", guest.pid()))?)?,
            psi: host::parse_psi(
                &memcg
                    .read("memory.pressure")
                    .context("memory.pressure (CONFIG_PSI)")?,
            )?,
        })
    }
}

/// Host vmstat counters a phase reports (the memcg's own memory.stat
/// lacks swap-ins on 6.12; in the test VM only QEMU swaps, but these are
/// the whole test VM's).
const VMSTAT_KEYS: &[&str] = &["pswpin", "pswpout", "workingset_refault_anon", "pgmajfault"];

fn phase_json(
    name: &str,
    mut load: Load,
    a: &Snapshot,
    b: &Snapshot,
    aging: &host::AgingRecord,
    memcg: &Memcg,
    series: bool,
) -> Result<Value> {
    let tick_ms = 1000.0 / host::clock_ticks() as f64;
    let vm = host::delta(&a.vmstat, &b.vmstat);
    // Every counter the kernel prints, 0 when no walk was seen: T/Y/F/A
    // on every kernel, C/Q/S/E on the series'.
    let mut counters = Map::new();
    let letters: &[char] = if series {
        &['t', 'y', 'f', 'a', 'c', 'q', 's', 'e']
    } else {
        &['t', 'y', 'f', 'a']
    };
    for &l in letters {
        counters.insert(l.to_string(), json!(aging.sum(l)));
    }
    Ok(json!({
        "name": name,
        "load": load.json(),
        "memcg": host::delta(&a.memcg, &b.memcg),
        "memcg_current_end": memcg.current()?,
        "memcg_swap_end": memcg.read("memory.swap.current")?.parse::<u64>()?,
        "vmstat": VMSTAT_KEYS.iter().map(|k| (k.to_string(), json!(vm.get(*k).copied().unwrap_or(0)))).collect::<Map<_, _>>(),
        "guest_vmstat": host::delta(&a.guest, &b.guest),
        "qemu_user_ms": (b.qemu.0.saturating_sub(a.qemu.0)) as f64 * tick_ms,
        "qemu_sys_ms": (b.qemu.1.saturating_sub(a.qemu.1)) as f64 * tick_ms,
        "psi_some_ms": (b.psi.0.saturating_sub(a.psi.0)) as f64 / 1000.0,
        "psi_full_ms": (b.psi.1.saturating_sub(a.psi.1)) as f64 / 1000.0,
        "aging": {
            "passes": aging.passes(),
            "walks_seen": aging.walks.len(),
            "counters": counters,
        },
    }))
}

/// The proactive reclaim loop: writes `memory.reclaim` every period on
/// its own thread (pinned with the generator), timing its CPU use.
struct Reclaimer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Value>>,
}

impl Reclaimer {
    fn start(dir: PathBuf, bytes: u64, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || -> Result<Value> {
            let file = dir.join("memory.reclaim");
            let (mut writes, mut eagain, mut cpu, mut wall) =
                (0u64, 0u64, Duration::ZERO, Duration::ZERO);
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let (c0, t0) = (host::thread_cpu_time(), Instant::now());
                match std::fs::write(&file, bytes.to_string()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => eagain += 1,
                    Err(e) => return Err(e).with_context(|| format!("writing {}", file.display())),
                }
                cpu += host::thread_cpu_time() - c0;
                wall += t0.elapsed();
                writes += 1;
                next += period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            Ok(json!({
                "writes": writes,
                "eagain": eagain,
                "bytes_per_write": bytes,
                "cpu_ms": cpu.as_secs_f64() * 1e3,
                "wall_ms": wall.as_secs_f64() * 1e3,
            }))
        });
        Self { stop, thread }
    }

    fn finish(self) -> Result<Value> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the reclaim loop panicked"))?
    }
}

fn set_mode(mode: Mode) -> Result<()> {
    let series = features::is_series_kernel()?;
    match mode {
        Mode::On | Mode::Off if !series => bail!("mode {} needs the series' kernel", mode.name()),
        Mode::Base if series => bail!("mode base needs the base kernel (FLAVOR=base)"),
        Mode::On => features::set_lru_gen_caps(0x7 | caps::SECONDARY_MMU_WALK),
        Mode::Off => features::set_lru_gen_caps(0x7),
        Mode::Base => {
            let c = features::lru_gen_caps()?;
            if c != 0x7 {
                bail!("the base kernel booted with lru_gen/enabled {c:#06x}, not 0x0007");
            }
            Ok(())
        }
    }
}

fn progress(msg: &str) {
    println!("guest_scenario: {msg}");
}

/// One run: a fresh memcg and guest, fill, warm-up, the two phases.
fn one_run(
    o: &RunOpts,
    mode: Mode,
    idx: usize,
    (qemu_cpu, gen_cpu): (usize, usize),
) -> Result<Value> {
    set_mode(mode)?;
    let caps_now = features::lru_gen_caps()?;
    let series = features::is_series_kernel()?;
    host::pin_to_cpu(gen_cpu)?;
    let name = format!("guest-scenario-{}", mode.name());
    let memcg = fresh_memcg(&name)?;
    let dir = PathBuf::from(format!("/tmp/guest_scenario/{}-{}", o.round, mode.name()));
    let port = 20000 + idx as u16;
    let cfg = GuestConfig {
        kernel: default_kernel(&o.kernel)?,
        image: default_image(&o.image),
        mem_mib: o.guest_mem,
        mc_mem_mib: o.memcached_mib(),
        port,
        cpu: qemu_cpu,
        cgroup_procs: PathBuf::from(CGROUP_ROOT).join(&name).join("cgroup.procs"),
        dir: dir.clone(),
    };
    drop_caches()?;
    let mut guest = Guest::start(&cfg)?;
    let mut c = guest.wait_ready(port, Duration::from_secs(600))?;
    let boot_secs = guest.started.elapsed().as_secs_f64();
    progress(&format!(
        "{} round {}: guest up after {boot_secs:.1}s",
        mode.name(),
        o.round
    ));
    let value = (o.value << 10) as usize;
    let ks = Keyspace::new(
        (o.hot << 20) / value as u64,
        (o.cold << 20) / value as u64,
        value,
    )?;
    let mut w = Workload {
        ks,
        versions: vec![0; ks.keys() as usize],
        rng: Rng::new(0x5eed ^ o.round as u64),
        hot_share: o.hot_share,
        set_share: o.set_share,
    };
    let t = Instant::now();
    w.fill(&mut guest, &mut c)?;
    let fill_secs = t.elapsed().as_secs_f64();
    progress(&format!(
        "filled {} keys ({} MiB) in {fill_secs:.1}s",
        ks.keys(),
        o.hot + o.cold
    ));
    let warm = w.run(&mut c, o.warm as f64)?;
    progress(&format!("warm-up: {} requests in {}s", warm.ops(), o.warm));
    let footprint = memcg.current()?;
    let footprint_stat = host::parse_kv(&memcg.read("memory.stat")?)?;

    // Phase 1: memory.max below the footprint.
    // Below the anonymous footprint: with the limit at the total usage
    // minus the cut, the host met it with QEMU's file pages alone (52 MiB
    // of them here) and swapped no guest memory.
    let cut = o.limit_cut.unwrap_or(o.cold / 2) << 20;
    let file = footprint_stat.get("file").copied().unwrap_or(0);
    let limit = footprint
        .saturating_sub(file)
        .saturating_sub(cut)
        .max(32 << 20);
    let a = Snapshot::take(&memcg, &mut guest)?;
    let sampler = AgingSampler::start(&memcg.path(), Duration::from_millis(200))?;
    let c0 = host::thread_cpu_time();
    memcg.write("memory.max", &limit.to_string())?;
    let set_limit_cpu = host::thread_cpu_time() - c0;
    let load = w.run(&mut c, o.phase as f64)?;
    let aging = sampler.finish()?;
    let b = Snapshot::take(&memcg, &mut guest)?;
    let mut limit_phase = phase_json("limit", load, &a, &b, &aging, &memcg, series)?;
    limit_phase["limit_bytes"] = json!(limit);
    limit_phase["set_limit_cpu_ms"] = json!(set_limit_cpu.as_secs_f64() * 1e3);
    progress(&format!(
        "limit phase: {:.0} req/s, {} aging passes",
        limit_phase["load"]["throughput"].as_f64().unwrap_or(0.0),
        aging.passes()
    ));
    memcg.write("memory.max", "max")?;

    // Settle: every key read back inside the guest, so that the proactive
    // phase starts with the guest's memory resident whatever the limit
    // phase left in swap.
    let t = Instant::now();
    let out = guest.control_timeout(
        &format!("touch {} {} {}", ks.hot, ks.cold, ks.value_len),
        Duration::from_secs(1800),
    )?;
    if !out.lines().any(|l| l == "rc=0") {
        bail!("reading the keys back in the guest failed:\n{out}");
    }
    let settle_secs = t.elapsed().as_secs_f64();
    let swap_mib = memcg.read("memory.swap.current")?.parse::<u64>()? >> 20;
    progress(&format!(
        "settled in {settle_secs:.1}s (memory.swap.current {swap_mib} MiB)"
    ));

    // Phase 2: proactive reclaim at a fixed rate.
    let a = Snapshot::take(&memcg, &mut guest)?;
    let sampler = AgingSampler::start(&memcg.path(), Duration::from_millis(200))?;
    let rec = Reclaimer::start(
        PathBuf::from(CGROUP_ROOT).join(&name),
        o.reclaim << 20,
        Duration::from_millis(o.reclaim_period),
    );
    let load = w.run(&mut c, o.phase as f64);
    let reclaimer = rec.finish()?;
    let load = load?;
    let aging = sampler.finish()?;
    let b = Snapshot::take(&memcg, &mut guest)?;
    let mut pro_phase = phase_json("proactive", load, &a, &b, &aging, &memcg, series)?;
    pro_phase["reclaimer"] = reclaimer;
    pro_phase["settle_secs"] = json!(settle_secs);
    progress(&format!(
        "proactive phase: {:.0} req/s, {} aging passes",
        pro_phase["load"]["throughput"].as_f64().unwrap_or(0.0),
        aging.passes()
    ));
    let guest_meminfo = guest.control("meminfo")?;
    guest.stop()?;
    drop(memcg);
    Ok(json!({
        "mode": mode.name(),
        "round": o.round,
        "kernel_release": features::kernel_release()?,
        "flavor": std::env::var("MGLRU_FLAVOR").unwrap_or_default(),
        "base": std::env::var("MGLRU_BASE").unwrap_or_default(),
        "lru_gen_enabled": format!("{caps_now:#06x}"),
        "guest_kernel": cfg.kernel,
        "params": {
            "guest_mem_mib": o.guest_mem, "memcached_mib": cfg.mc_mem_mib,
            "hot_mib": o.hot, "cold_mib": o.cold, "value_kib": o.value,
            "hot_keys": ks.hot, "cold_keys": ks.cold,
            "hot_share": o.hot_share, "set_share": o.set_share,
            "warm_secs": o.warm, "phase_secs": o.phase,
            "limit_cut_bytes": cut, "reclaim_bytes": o.reclaim << 20,
            "reclaim_period_ms": o.reclaim_period,
            "qemu_cpu": qemu_cpu, "generator_cpu": gen_cpu, "lruvec": NID_NOTE,
        },
        "boot_secs": boot_secs,
        "fill_secs": fill_secs,
        "footprint_bytes": footprint,
        "footprint_memory_stat": footprint_stat,
        "phases": [limit_phase, pro_phase],
        "guest_meminfo_end": guest_meminfo,
    }))
}

/// `guest_scenario run`.
pub fn run(o: &RunOpts) -> Result<()> {
    for f in [default_kernel(&o.kernel)?, default_image(&o.image)] {
        if !f.is_file() {
            bail!("{} missing (make scenario builds it)", f.display());
        }
    }
    let cpus = cpus()?;
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    ensure_loopback()?;
    ensure_swap()?;
    let _caps = CapsGuard::save()?;
    for (i, &mode) in o.modes.iter().enumerate() {
        let t = Instant::now();
        let v = one_run(o, mode, i, cpus)
            .with_context(|| format!("run {} (round {})", mode.name(), o.round))?;
        let f = o.out.join(format!("run-{}-{}.json", o.round, mode.name()));
        std::fs::write(&f, serde_json::to_string_pretty(&v)? + "\n")?;
        progress(&format!(
            "{} done in {:.0}s: {}",
            mode.name(),
            t.elapsed().as_secs_f64(),
            f.display()
        ));
    }
    Ok(())
}

/// `guest_scenario smoke`: KTAP.
pub fn smoke(o: &SmokeOpts) -> Result<()> {
    if !Path::new("/dev/kvm").exists() {
        Ktap::lacks("/dev/kvm");
    }
    if let Some(why) = features::memcg_aging_missing() {
        Ktap::lacks(&why);
    }
    let kernel = default_kernel(&o.kernel).unwrap_or_else(|e| Ktap::bail_out(&format!("{e:#}")));
    let image = default_image(&o.image);
    let mut t = Ktap::new(4);
    let setup = (|| -> Result<(Memcg, Guest, Client<TcpStream>, f64)> {
        let (qemu_cpu, gen_cpu) = cpus()?;
        ensure_loopback()?;
        ensure_swap()?;
        host::pin_to_cpu(gen_cpu)?;
        let name = "guest-scenario-smoke";
        let memcg = fresh_memcg(name)?;
        let cfg = GuestConfig {
            kernel,
            image,
            mem_mib: 256,
            mc_mem_mib: 48,
            port: 20100,
            cpu: qemu_cpu,
            cgroup_procs: PathBuf::from(CGROUP_ROOT).join(name).join("cgroup.procs"),
            dir: PathBuf::from("/tmp/guest_scenario/smoke"),
        };
        drop_caches()?;
        let mut guest = Guest::start(&cfg)?;
        let c = guest.wait_ready(cfg.port, Duration::from_secs(240))?;
        let secs = guest.started.elapsed().as_secs_f64();
        Ok((memcg, guest, c, secs))
    })();
    let (memcg, mut guest, mut c, boot) = match setup {
        Ok(s) => s,
        Err(e) => {
            t.fail("guest_boots_and_memcached_answers", &format!("{e:#}"));
            for n in [
                "workload_answers_with_intact_values",
                "host_reclaim_swaps_guest_memory_out_and_in",
                "guest_reports_its_vmstat",
            ] {
                t.fail(n, "the guest did not come up");
            }
            t.finish();
        }
    };
    t.diag(&format!(
        "guest up after {boot:.1}s (QEMU pid {}, memcg {})",
        guest.pid(),
        memcg.path()
    ));
    t.ok("guest_boots_and_memcached_answers");

    let value = 4 << 10;
    let ks = Keyspace::new((2 << 20) / value as u64, (14 << 20) / value as u64, value)?;
    let mut w = Workload {
        ks,
        versions: vec![0; ks.keys() as usize],
        rng: Rng::new(7),
        hot_share: 0.9,
        set_share: 0.05,
    };
    let answered = (|| -> Result<()> {
        let t0 = Instant::now();
        w.fill(&mut guest, &mut c)?;
        t.diag(&format!(
            "filled {} keys ({} MiB) in the guest in {:.1}s",
            ks.keys(),
            (ks.keys() * ks.value_len as u64) >> 20,
            t0.elapsed().as_secs_f64()
        ));
        let mut l = w.run(&mut c, 3.0)?;
        t.diag(&format!(
            "{} requests in {:.1}s, p50 {} us, p99 {} us",
            l.ops(),
            l.secs,
            l.all.percentile(50.0).unwrap_or(0),
            l.all.percentile(99.0).unwrap_or(0)
        ));
        if l.all.is_empty() || l.gets == 0 {
            bail!("no request completed in 3 s");
        }
        if l.misses > 0 {
            bail!(
                "{} reads missed (memcached evicted values it had room for)",
                l.misses
            );
        }
        Ok(())
    })();
    let ok = t.check("workload_answers_with_intact_values", answered);

    let reclaimed = (|| -> Result<()> {
        if !ok {
            bail!("the workload did not answer");
        }
        let a = host::parse_kv(&sys::read("/proc/vmstat")?)?;
        let ma = host::parse_kv(&memcg.read("memory.stat")?)?;
        let before = memcg.current()?;
        // Half of what QEMU uses: more than the guest's idle memory, so
        // part of memcached's cold values must go to swap.
        let _ = memcg.try_reclaim(before / 2)?;
        let after = memcg.current()?;
        let swapped: u64 = memcg.read("memory.swap.current")?.parse()?;
        let b = host::parse_kv(&sys::read("/proc/vmstat")?)?;
        let out = host::delta(&a, &b).get("pswpout").copied().unwrap_or(0);
        t.diag(&format!(
            "memory.reclaim: memory.current {} -> {} MiB, {} MiB in swap, {out} pages swapped out",
            before >> 20,
            after >> 20,
            swapped >> 20
        ));
        if out == 0 || swapped == 0 {
            bail!("memory.reclaim swapped nothing out of the QEMU memcg");
        }
        let l = w.read_cold(&mut c, 256)?;
        let c2 = host::parse_kv(&sys::read("/proc/vmstat")?)?;
        let mb = host::parse_kv(&memcg.read("memory.stat")?)?;
        let swapin = host::delta(&b, &c2).get("pswpin").copied().unwrap_or(0);
        let majflt = host::delta(&ma, &mb)
            .get("pgmajfault")
            .copied()
            .unwrap_or(0);
        t.diag(&format!(
            "read back {} cold values in {:.1}s, all intact: {majflt} major faults in the QEMU memcg, {swapin} pages swapped in",
            l.gets, l.secs
        ));
        // A swap-in fault (KVM's through GUP included) is charged to the
        // faulting mm's memcg: QEMU's.
        if majflt == 0 || swapin == 0 {
            bail!("reading the cold set back took no major fault in the QEMU memcg ({majflt}) or swapped nothing in ({swapin})");
        }
        Ok(())
    })();
    t.check("host_reclaim_swaps_guest_memory_out_and_in", reclaimed);

    let vmstat = (|| -> Result<()> {
        let v = host::parse_kv(&guest.control("vmstat")?)?;
        let faults = v.get("pgfault").copied().unwrap_or(0);
        if faults == 0 || !v.contains_key("nr_free_pages") {
            bail!("the guest's /proc/vmstat lacks pgfault or nr_free_pages: {v:?}");
        }
        t.diag(&format!(
            "guest vmstat: {} counters, pgfault {faults}",
            v.len()
        ));
        Ok(())
    })();
    t.check("guest_reports_its_vmstat", vmstat);
    drop(c);
    guest.stop()?;
    drop(memcg);
    t.finish();
}
