// SPDX-License-Identifier: GPL-2.0
//! The command line, and where guest code may run (`--vcpu-cpus`), which
//! every child process inherits.

use anyhow::Result;
use clap::Parser;
use mglru_selftest::kvm;
use mglru_selftest::units::{parse_duration, parse_size};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "MGLRU aging under chaos (KVM, lru_mirror, swap, 0x8 toggling) with invariants")]
pub struct Opts {
    /// How long the chaos runs (e.g. 90s, 20m).
    #[arg(short = 'd', long, default_value = "90s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time between quiet checkpoints.
    #[arg(short = 'c', long = "checkpoint-every", default_value = "15s",
          value_parser = parse_duration)]
    pub checkpoint_every: Duration,
    /// Guest memory of the swapping KVM guest (its memcg gets 3/4 of it).
    #[arg(short = 'g', long = "guest-mem", default_value = "32M", value_parser = parse_guest_mem)]
    pub guest_mem: usize,
    /// Seed of the random choices (default: from the clock; printed).
    #[arg(short = 's', long)]
    pub seed: Option<u64>,
    /// Fail unless at least this many aging passes ran.
    #[arg(long = "min-passes", default_value_t = 0)]
    pub min_passes: u64,
    /// CPUs that run guest code (every vCPU of every VM, children's
    /// included): comma-separated CPU numbers (e.g. 1 or 0,1; no ranges),
    /// or `any` for wherever the scheduler puts them.  Default: the last
    /// CPU this process may use, when it may use two or more — QEMU 7.2's
    /// multi-threaded TCG corrupts nested guests' state when they run on
    /// both of its vCPUs (Documentation/testing.md, "Nested guests under
    /// QEMU TCG"); aging, reclaim and invalidations still run on every CPU.
    #[arg(long = "vcpu-cpus", value_parser = parse_cpu_choice)]
    pub vcpu_cpus: Option<CpuChoice>,
    /// Internal: run as a child process of this role.
    #[arg(long, hide = true, value_parser = ["guest", "churn", "vm-exit", "vm-kill", "mirror-user"])]
    pub role: Option<String>,
}

/// Where guest code runs (`--vcpu-cpus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuChoice {
    /// Wherever the scheduler puts it.
    Any,
    /// Only on these CPUs.
    List(Vec<usize>),
}

/// `--vcpu-cpus`: `any`, or a comma-separated list of CPUs this process may
/// run on.
fn parse_cpu_choice(s: &str) -> Result<CpuChoice, String> {
    if s == "any" {
        return Ok(CpuChoice::Any);
    }
    let cpus = s
        .split(',')
        .map(|w| {
            w.parse::<usize>()
                .map_err(|_| format!("'{w}' is not a CPU number (want e.g. 1, 0,1 or any)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for &c in &cpus {
        kvm::check_cpu(c).map_err(|e| format!("{e:#}"))?;
    }
    Ok(CpuChoice::List(cpus))
}

/// The CPUs guest code runs on: `--vcpu-cpus`, or by default the last CPU
/// this process may use when it may use two or more (none: any).
pub fn vcpu_cpus(o: &Opts) -> Result<Vec<usize>> {
    Ok(match &o.vcpu_cpus {
        Some(CpuChoice::Any) => Vec::new(),
        Some(CpuChoice::List(l)) => l.clone(),
        None => default_vcpu_cpus(&kvm::allowed_cpus()?),
    })
}

/// The default of `--vcpu-cpus` given the CPUs this process may use: the
/// last one when there are two or more, else no pinning.
fn default_vcpu_cpus(allowed: &[usize]) -> Vec<usize> {
    match allowed {
        [_, .., last] => vec![*last],
        _ => Vec::new(),
    }
}

/// `--guest-mem`: a size from 1 MiB to 1 GiB.
fn parse_guest_mem(s: &str) -> Result<usize, String> {
    let b = parse_size(s)?;
    if !(1 << 20..=1 << 30).contains(&b) {
        return Err(format!("{s:?} is not between 1M and 1G"));
    }
    Ok(b)
}

/// `--vcpu-cpus` for a child process: the CPUs this one's guests run on.
pub fn vcpu_cpus_args() -> [String; 2] {
    let cpus = kvm::vcpu_cpus();
    let list = if cpus.is_empty() {
        "any".to_string()
    } else {
        let l: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
        l.join(",")
    };
    ["--vcpu-cpus".to_string(), list]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_cpus_default_is_the_last_cpu_of_two_or_more() {
        assert_eq!(default_vcpu_cpus(&[]), Vec::<usize>::new());
        assert_eq!(default_vcpu_cpus(&[0]), Vec::<usize>::new());
        assert_eq!(default_vcpu_cpus(&[3]), Vec::<usize>::new());
        assert_eq!(default_vcpu_cpus(&[0, 1]), vec![1]);
        assert_eq!(default_vcpu_cpus(&[0, 2, 5]), vec![5]);
    }
}
