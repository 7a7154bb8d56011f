// SPDX-License-Identifier: GPL-2.0
//! Must not compile: keeping the iterator over a fast-only call's asked pages beyond the call.
//! It reads the core's `asked` bitmap, which lives for the call only; the operation has the
//! trait's own signature and stores the iterator in `self`.
use kernel::mm::mmu_notifier::{MmuNotifierOps, YoungBatch};
use kernel::prelude::*;
use kernel::sync::SpinLock;

module! {
    type: M,
    name: "cf_keep_asked",
    license: "GPL",
}

#[pin_data]
struct Keeper {
    #[pin]
    pending: SpinLock<Option<&'static mut (dyn Iterator<Item = usize> + Send)>>,
}

#[vtable]
impl MmuNotifierOps for Keeper {
    #[cfg(not(mglru_upstream_api))]
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn clear_young(&self, _start: usize, _end: usize) -> bool {
        false
    }

    fn test_clear_young_fast_only(&self, batch: &mut YoungBatch<'_>) {
        if let Ok(asked) = KBox::new(batch.asked(), GFP_ATOMIC) {
            let asked = KBox::leak(asked);
            *self.pending.lock() = Some(asked);
        }
        batch.fail_all();
    }
}

struct M;

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(M)
    }
}
