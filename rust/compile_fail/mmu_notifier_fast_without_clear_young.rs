// SPDX-License-Identifier: GPL-2.0
//! Must not compile: a fast-only op without `clear_young()`, through which its failed answers
//! would be resolved. The core would never ask it fast; the abstraction refuses to build the
//! operations table.
use kernel::mm::mmu_notifier::{MmuNotifierOps, Registration, YoungBatch};
use kernel::prelude::*;

module! {
    type: M,
    name: "cf_fast_only",
    license: "GPL",
}

struct FastOnly;

#[vtable]
impl MmuNotifierOps for FastOnly {
    #[cfg(not(mglru_upstream_api))]
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn test_clear_young_fast_only(&self, batch: &mut YoungBatch<'_>) {
        batch.fail_all();
    }
}

struct M;

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // Registering instantiates the operations table.
        let _ = KBox::pin_init(Registration::new_for_current(FastOnly), GFP_KERNEL);
        Ok(M)
    }
}
