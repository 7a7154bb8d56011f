// SPDX-License-Identifier: GPL-2.0
//! The users' setup: QEMU/KVM running a Linux guest and a real workload
//! while the host reclaims the QEMU process's memory.
//!
//! In the test VM, Debian's QEMU runs with KVM (`-accel kvm`, nested) and
//! boots the project's kernel with an initramfs holding memcached (built
//! by `scripts/scenario-image` from Debian's packages). A closed-loop load
//! generator in the test VM talks to memcached through QEMU's user-mode
//! network: requests go to a hot set of keys with probability
//! `--hot-share`, otherwise to the cold set, and every value read is
//! checked byte for byte. QEMU runs in a memcg of its own, pinned to one
//! CPU; the generator and the reclaim run on the other.
//!
//! `run` measures one or more runs (a fresh guest each), each with two
//! phases after the guest's memory is filled and warmed:
//!
//! - `limit`: `memory.max` set below the QEMU memcg's footprint (swap is a
//!   RAM disk), so the host reclaims whenever the guest touches a page
//!   that is not resident;
//! - `proactive`: no limit; a loop writes `memory.reclaim` at a fixed rate,
//!   as hosts reclaim idle guest memory.
//!
//! Per phase it records the workload's throughput and latency
//! percentiles, the memcg's refaults and major faults, swap traffic, the
//! memcg's aging passes and walk stats (`C`/`Q`/`S`/`E` on the series),
//! host CPU time (QEMU's system time, the reclaim loop's own CPU time),
//! the memcg's memory pressure stall time, and the guest's `/proc/vmstat`.
//!
//! `report` merges runs (any kernels) into the three-way table. Without a
//! subcommand (or with `smoke`) it is the one-minute KTAP smoke test that
//! `make check` runs: the guest boots, memcached answers with intact
//! values, and host reclaim swaps guest memory out and back in.
//!
//! A benchmark, not a test (except `smoke`): it never fails on a number.

mod host;
mod load;
mod memcache;
mod qemu;
mod report;
mod scenario;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

/// QEMU/KVM guest with memcached under host reclaim: runs, reports, smoke.
#[derive(Parser, Debug)]
#[command(name = "guest_scenario", version, about, long_about = None)]
struct Cli {
    /// Without one: the smoke test.
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Measure runs on the booted kernel (one fresh guest per mode, in the
    /// order given) and write one JSON file per run into OUT.
    Run(scenario::RunOpts),
    /// KTAP smoke test (the default): the guest boots, memcached answers
    /// and keeps its values through host reclaim.
    Smoke(scenario::SmokeOpts),
    /// In the guest (scripts/scenario-guest-init runs it): store every
    /// key's first value in the memcached at ADDR, cold set first.
    #[command(hide = true)]
    GuestFill(scenario::FillOpts),
    /// Merge run files into OUT/scenario.{json,md,dat}: the table of the
    /// modes with 95 % intervals of their ratios.
    Report {
        /// Output directory.
        #[arg(short, long)]
        out: PathBuf,
        /// Run files written by `run`.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::Run(o)) = &cli.cmd {
        if let Err(e) = o.check() {
            Cli::command()
                .error(clap::error::ErrorKind::ArgumentConflict, e)
                .exit();
        }
    }
    match cli.cmd {
        Some(Cmd::Run(o)) => scenario::run(&o),
        Some(Cmd::Smoke(o)) => scenario::smoke(&o),
        Some(Cmd::Report { out, runs }) => report::report(&out, &runs),
        Some(Cmd::GuestFill(o)) => scenario::guest_fill(&o),
        None => scenario::smoke(&scenario::SmokeOpts {
            kernel: None,
            image: None,
        }),
    }
}
