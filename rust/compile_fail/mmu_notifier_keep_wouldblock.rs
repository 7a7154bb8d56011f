// SPDX-License-Identifier: GPL-2.0
//! Must not compile: keeping a `WouldBlock` beyond the invalidation it was made for, in `self`,
//! to fail a later one where the core does not accept it.
use kernel::mm::mmu_notifier::{InvalidateRange, MmuNotifierOps, WouldBlock};
use kernel::prelude::*;
use kernel::sync::SpinLock;

module! {
    type: M,
    name: "cf_keep",
    license: "GPL",
}

#[pin_data]
struct Keeper {
    #[pin]
    token: SpinLock<Option<WouldBlock<'static>>>,
}

#[vtable]
impl MmuNotifierOps for Keeper {
    #[cfg(not(mglru_upstream_api))]
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn invalidate_range_start<'r>(
        &self,
        range: &InvalidateRange<'r>,
    ) -> Result<(), WouldBlock<'r>> {
        if let Some(token) = range.would_block() {
            *self.token.lock() = Some(token);
        }
        Ok(())
    }
}

struct M;

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(M)
    }
}
