// SPDX-License-Identifier: GPL-2.0
//! Must not compile: an MMU notifier that borrows. A registration can be leaked with
//! `mem::forget()` in safe code, and its callbacks would then use a dead borrow.
use kernel::mm::mmu_notifier::{InvalidateRange, MmuNotifierOps, WouldBlock};
use kernel::prelude::*;

module! {
    type: M,
    name: "cf_borrow",
    license: "GPL",
}

struct Borrowing<'a>(&'a u64);

#[vtable]
impl<'a> MmuNotifierOps for Borrowing<'a> {
    #[cfg(not(mglru_upstream_api))]
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn invalidate_range_start<'r>(
        &self,
        _range: &InvalidateRange<'r>,
    ) -> Result<(), WouldBlock<'r>> {
        let _ = self.0;
        Ok(())
    }
}

struct M;

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(M)
    }
}
