// SPDX-License-Identifier: GPL-2.0
//! Must not compile: failing an invalidation in a context where the core does not accept it.
//! Only `InvalidateRange::would_block()` makes a `WouldBlock`.
use kernel::mm::mmu_notifier::{InvalidateRange, MmuNotifierOps, WouldBlock};
use kernel::prelude::*;

module! {
    type: M,
    name: "cf_forge",
    license: "GPL",
}

struct Owning(u64);

#[vtable]
impl MmuNotifierOps for Owning {
    #[cfg(not(mglru_upstream_api))]
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn invalidate_range_start<'r>(
        &self,
        _range: &InvalidateRange<'r>,
    ) -> Result<(), WouldBlock<'r>> {
        let _ = self.0;
        Err(WouldBlock(core::marker::PhantomData))
    }
}

struct M;

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(M)
    }
}
