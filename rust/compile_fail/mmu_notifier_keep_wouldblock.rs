// SPDX-License-Identifier: GPL-2.0
//! Must not compile: keeping a `WouldBlock` beyond the invalidation it was made for, to fail a
//! later one where the core does not accept it.
use kernel::mm::mmu_notifier::{InvalidateRange, MmuNotifierOps, WouldBlock};
use kernel::prelude::*;

module! {
    type: M,
    name: "cf_keep",
    license: "GPL",
}

struct Owning(u64);

#[vtable]
impl MmuNotifierOps for Owning {
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn invalidate_range_start<'r>(
        &self,
        range: &InvalidateRange<'r>,
    ) -> Result<(), WouldBlock<'r>> {
        let _ = self.0;
        let kept: Option<WouldBlock<'static>> = range.would_block();
        drop(kept);
        Ok(())
    }
}

struct M;

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(M)
    }
}
