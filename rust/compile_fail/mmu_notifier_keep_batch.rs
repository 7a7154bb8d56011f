// SPDX-License-Identifier: GPL-2.0
//! Must not compile: keeping the batch of a fast-only call beyond the call, to answer into the
//! core's bitmaps after they are gone. Storing it needs a `YoungBatch<'static>`, and the trait
//! hands out a batch borrowed for the call only, so an operation that asks for a `'static` batch
//! does not match the trait (if the trait ever handed out `'static` batches, this would compile).
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
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn clear_young(&self, _start: usize, _end: usize) -> bool {
        false
    }

    fn test_clear_young_fast_only(&self, batch: &mut YoungBatch<'static>) {
        let taken = core::mem::replace(
            batch,
            YoungBatch::new(0, 0, false, &[], &mut [], &mut []).unwrap(),
        );
        *self.last.lock() = Some(taken);
    }
}

struct M;

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(M)
    }
}
