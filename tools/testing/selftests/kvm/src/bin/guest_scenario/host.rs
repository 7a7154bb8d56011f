// SPDX-License-Identifier: GPL-2.0
//! What the host (the test VM) measures around the guest: the QEMU memcg's
//! `memory.stat` and `memory.pressure`, the QEMU process's CPU time,
//! `/proc/vmstat`, and the memcg's aging passes and walk stats from
//! `lru_gen_full`.

use anyhow::{bail, Context, Result};
use mglru_selftest::lru_gen;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// `name value` lines (`memory.stat`, `/proc/vmstat`) as a map.
pub fn parse_kv(text: &str) -> Result<BTreeMap<String, u64>> {
    let mut m = BTreeMap::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let mut t = l.split_whitespace();
        let (Some(k), Some(v), None) = (t.next(), t.next(), t.next()) else {
            bail!("line {}: not 'name value': {l:?}", i + 1);
        };
        let v = v
            .parse()
            .with_context(|| format!("line {}: bad value in {l:?}", i + 1))?;
        m.insert(k.to_owned(), v);
    }
    Ok(m)
}

/// `b - a` for every key of `b` (counters: a key missing in `a` counts
/// from 0; a counter that went down, e.g. a gauge, gives 0).
pub fn delta(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    b.iter()
        .map(|(k, &v)| (k.clone(), v.saturating_sub(a.get(k).copied().unwrap_or(0))))
        .collect()
}

/// The `total=` stall times (µs) of a PSI file: `(some, full)`.
pub fn parse_psi(text: &str) -> Result<(u64, u64)> {
    let mut some = None;
    let mut full = None;
    for l in text.lines() {
        let mut t = l.split_whitespace();
        let which = t.next();
        let total = t
            .find_map(|w| w.strip_prefix("total="))
            .with_context(|| format!("no total= in PSI line {l:?}"))?
            .parse::<u64>()
            .with_context(|| format!("bad total= in PSI line {l:?}"))?;
        match which {
            Some("some") => some = Some(total),
            Some("full") => full = Some(total),
            _ => bail!("unexpected PSI line {l:?}"),
        }
    }
    Ok((
        some.context("no 'some' line")?,
        full.context("no 'full' line")?,
    ))
}

/// User and system CPU time of a whole process (all its threads) in clock
/// ticks, from `/proc/PID/stat` (fields 14 and 15).
pub fn parse_proc_stat_times(text: &str) -> Result<(u64, u64)> {
    // The command name (field 2) may hold blanks and parentheses: the
    // fields after it start after the last ')'.
    let rest = &text[text.rfind(')').context("no ')' in /proc/PID/stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, index 11.
    if f.len() < 13 {
        bail!("/proc/PID/stat too short: {text:?}");
    }
    Ok((f[11].parse()?, f[12].parse()?))
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf() has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Pins the calling thread (and threads it creates later) to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("cpu {cpu} out of range");
    }
    // SAFETY: cpu_set_t is plain data for which all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of `set`; `cpu` is below the set's
    // size (CPU_SETSIZE), checked above, so it neither panics nor writes
    // out of bounds.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("sched_setaffinity(cpu {cpu})"));
    }
    Ok(())
}

/// Aging passes of one lruvec and the walk stats of the passes seen,
/// sampled from `lru_gen_full` while a phase runs.
///
/// `lru_gen_full` shows the stats of the walk that started at generation
/// `seq` next to `seq` once `max_seq` has moved past it (with
/// `CONFIG_LRU_GEN_STATS`), and only while `seq` is not yet evicted: the
/// sampler keeps the last value seen for every `seq`, so a pass whose
/// generation was evicted between two samples is counted in `passes` but
/// not in `walks_seen` or the counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgingRecord {
    /// `max_seq` when the phase started and when it ended.
    pub seq_start: u64,
    pub seq_end: u64,
    /// Per walked generation (`seq_start <= seq < seq_end`): its counters.
    pub walks: BTreeMap<u64, Vec<(char, u64)>>,
}

impl AgingRecord {
    /// Aging passes (generations created) in the phase.
    pub fn passes(&self) -> u64 {
        self.seq_end.saturating_sub(self.seq_start)
    }

    /// Sum of counter `letter` over the walks seen.
    pub fn sum(&self, letter: char) -> u64 {
        self.walks
            .values()
            .flat_map(|c| c.iter().filter(|(l, _)| *l == letter).map(|&(_, v)| v))
            .sum()
    }

    /// Records one `lru_gen_full` reading of the lruvec.
    pub fn observe(&mut self, node: &lru_gen::Node) {
        let Some(max) = node.max_seq() else { return };
        self.seq_end = self.seq_end.max(max);
        for g in &node.gens {
            if g.seq < self.seq_start || g.seq >= max {
                continue;
            }
            if let Some(w) = &g.walk {
                if !w.counters.is_empty() {
                    self.walks.insert(g.seq, w.counters.clone());
                }
            }
        }
    }
}

/// Samples `lru_gen_full` for `memcg_path`, node 0, every `period` until
/// stopped.
pub struct AgingSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<AgingRecord>>>,
}

impl AgingSampler {
    /// Starts sampling; `max_seq` now is the phase's start.
    pub fn start(memcg_path: &str, period: Duration) -> Result<Self> {
        let node = lru_gen::node_full_of(memcg_path, 0)?;
        let seq = node.max_seq().context("lruvec has no generations")?;
        let mut rec = AgingRecord {
            seq_start: seq,
            seq_end: seq,
            walks: BTreeMap::new(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let path = memcg_path.to_owned();
        let thread = std::thread::spawn(move || -> Result<AgingRecord> {
            loop {
                let done = s.load(Ordering::Relaxed);
                rec.observe(&lru_gen::node_full_of(&path, 0)?);
                if done {
                    return Ok(rec);
                }
                std::thread::sleep(period);
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops sampling (after one last reading) and returns the record.
    pub fn finish(mut self) -> Result<AgingRecord> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("finished twice")
            .join()
            .map_err(|_| anyhow::anyhow!("the lru_gen sampler panicked"))?
    }
}

impl Drop for AgingSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_and_delta() {
        let a = parse_kv("anon 10\npswpin 3\n").unwrap();
        let b = parse_kv("anon 4\npswpin 5\nnew 2\n\n").unwrap();
        let d = delta(&a, &b);
        assert_eq!(d["anon"], 0);
        assert_eq!(d["pswpin"], 2);
        assert_eq!(d["new"], 2);
        assert!(parse_kv("anon\n").is_err());
        assert!(parse_kv("anon x\n").is_err());
        assert!(parse_kv("anon 1 2\n").is_err());
    }

    #[test]
    fn psi() {
        let t = "some avg10=0.00 avg60=0.00 avg300=0.00 total=1234\n\
                 full avg10=0.00 avg60=0.00 avg300=0.00 total=56\n";
        assert_eq!(parse_psi(t).unwrap(), (1234, 56));
        assert!(parse_psi("some avg10=0.00 total=1\n").is_err());
        assert!(parse_psi("some avg10=0.00\nfull total=2\n").is_err());
    }

    #[test]
    fn proc_stat() {
        let t = "42 (qemu (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 17 23 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_proc_stat_times(t).unwrap(), (17, 23));
        assert!(parse_proc_stat_times("42 (x) S 1").is_err());
    }

    #[test]
    fn aging_record_counts_walks_between_samples() {
        let text = "memcg 5 /s\n node 0\n 3 10 1 0\n   1t 2y\n 4 5 1 0\n   7t 1y\n 5 1 1 0\n";
        let all = lru_gen::parse(text).unwrap();
        let node = &all[0].nodes[0];
        let mut r = AgingRecord {
            seq_start: 4,
            seq_end: 4,
            walks: BTreeMap::new(),
        };
        r.observe(node);
        assert_eq!(r.passes(), 1);
        assert_eq!(r.walks.len(), 1);
        assert_eq!(r.sum('t'), 7);
        assert_eq!(r.sum('y'), 1);
        assert_eq!(r.sum('c'), 0);
    }
}
