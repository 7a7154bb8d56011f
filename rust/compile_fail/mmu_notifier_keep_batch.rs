// SPDX-License-Identifier: GPL-2.0
//! Must not compile: keeping the batch of a fast-only call beyond the call, to answer into the
//! core's bitmaps after they are gone. The operation has the trait's own signature; the batch it
//! is handed is borrowed for the call only, so storing it in `self` lets it escape the method.
use kernel::mm::mmu_notifier::{MmuNotifierOps, YoungBatch};
use kernel::prelude::*;
use kernel::sync::SpinLock;

module! {
    type: M,
    name: "cf_keep_batch",
    license: "GPL",
}

#[pin_data]
struct Keeper {
    #[pin]
    last: SpinLock<Option<YoungBatch<'static>>>,
}

#[vtable]
impl MmuNotifierOps for Keeper {
    #[cfg(not(mglru_upstream_api))]
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn clear_young(&self, _start: usize, _end: usize) -> bool {
        false
    }

    fn test_clear_young_fast_only(&self, batch: &mut YoungBatch<'_>) {
        let Ok(empty) = YoungBatch::new(0, 0, false, &[], &mut [], &mut []) else {
            return;
        };
        let taken = core::mem::replace(batch, empty);
        *self.last.lock() = Some(taken);
    }
}

struct M;

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(M)
    }
}
