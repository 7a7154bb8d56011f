// SPDX-License-Identifier: GPL-2.0
//! cgroup v2 memory-controller helpers.

use crate::{lru_gen, sys};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Mount point of the cgroup v2 hierarchy.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup v2 with the memory controller, removed when dropped.
///
/// Invariant: `dir` exists under [`CGROUP_ROOT`] while `self` lives, and the
/// process that created it is moved back to the root before removal.
pub struct Memcg {
    name: String,
    dir: PathBuf,
}

impl Memcg {
    /// Creates `/sys/fs/cgroup/<name>` (after enabling `+memory` for the
    /// root's children). An existing leftover group of that name is reused.
    pub fn create(name: &str) -> Result<Self> {
        if name.is_empty() || name.contains('/') {
            bail!("bad memcg name {name:?}");
        }
        let controllers = sys::read(format!("{CGROUP_ROOT}/cgroup.controllers"))
            .context("cgroup v2 not mounted at /sys/fs/cgroup")?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            bail!("the memory controller is not available (CONFIG_MEMCG?)");
        }
        sys::write(format!("{CGROUP_ROOT}/cgroup.subtree_control"), "+memory")?;
        let dir = PathBuf::from(CGROUP_ROOT).join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("mkdir {}", dir.display())),
        }
        Ok(Self {
            name: name.to_owned(),
            dir,
        })
    }

    /// The cgroup path as `lru_gen` prints it (`/<name>`).
    pub fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// Reads one of the group's interface files.
    pub fn read(&self, file: &str) -> Result<String> {
        sys::read_trimmed(self.dir.join(file))
    }

    /// Writes one of the group's interface files.
    pub fn write(&self, file: &str, value: &str) -> Result<()> {
        sys::write(self.dir.join(file), value)
    }

    /// Moves the calling process (all its threads) into the group.
    pub fn enter(&self) -> Result<()> {
        self.write("cgroup.procs", &std::process::id().to_string())
    }

    /// `memory.current` in bytes.
    pub fn current(&self) -> Result<u64> {
        self.read("memory.current")?
            .parse()
            .context("parsing memory.current")
    }

    /// Proactive reclaim through `memory.reclaim`; `EAGAIN` (could not
    /// reclaim it all) is not an error.
    pub fn reclaim(&self, bytes: u64) -> Result<()> {
        self.try_reclaim(bytes).map(drop)
    }

    /// Proactive reclaim through `memory.reclaim`, telling the outcomes
    /// apart: `Ok(true)` if the kernel reclaimed all of `bytes`, `Ok(false)`
    /// on `EAGAIN` (it could not reclaim it all), an error otherwise.
    pub fn try_reclaim(&self, bytes: u64) -> Result<bool> {
        match self.write("memory.reclaim", &bytes.to_string()) {
            Ok(()) => Ok(true),
            Err(e) if sys::errno_of(&e) == Some(libc::EAGAIN) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The memcg id that `/sys/kernel/debug/lru_gen` uses for this group.
    pub fn lru_gen_id(&self) -> Result<u32> {
        let all = lru_gen::read()?;
        Ok(lru_gen::find(&all, &self.path())
            .with_context(|| format!("memcg {} not listed in lru_gen", self.path()))?
            .id)
    }
}

impl Drop for Memcg {
    fn drop(&mut self) {
        let _ = sys::write(
            format!("{CGROUP_ROOT}/cgroup.procs"),
            &std::process::id().to_string(),
        );
        let _ = std::fs::remove_dir(&self.dir);
    }
}
