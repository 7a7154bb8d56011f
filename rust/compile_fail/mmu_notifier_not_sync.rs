// SPDX-License-Identifier: GPL-2.0
//! Must not compile: an MMU notifier whose state is not `Sync`. Callbacks run concurrently on
//! any CPU and share `&self`.
use core::cell::Cell;
use kernel::mm::mmu_notifier::MmuNotifierOps;
use kernel::prelude::*;

module! {
    type: M,
    name: "cf_not_sync",
    license: "GPL",
}

struct Counting(Cell<u64>);

#[vtable]
impl MmuNotifierOps for Counting {
    #[cfg(not(mglru_upstream_api))]
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn clear_young(&self, _start: usize, _end: usize) -> bool {
        self.0.set(self.0.get() + 1);
        false
    }
}

struct M;

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(M)
    }
}
