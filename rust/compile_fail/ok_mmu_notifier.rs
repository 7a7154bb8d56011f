// SPDX-License-Identifier: GPL-2.0
//! Control: the notifier of the compile-fail cases, owning its data, failing only through
//! `range.would_block()`, answering fast-only batches within the call (with `clear_young()`,
//! answering while iterating over `asked()`) and keeping in `self` only owned values derived from
//! the range, the batch and its `asked()` iterator (what the `keep_*` cases keep borrowed),
//! compiles, and so does registering it.
use kernel::mm::mmu_notifier::{
    InvalidateRange, MmuNotifierOps, Registration, WouldBlock, YoungBatch,
};
use kernel::new_spinlock;
use kernel::prelude::*;
use kernel::sync::SpinLock;

module! {
    type: M,
    name: "cf_ok",
    license: "GPL",
}

/// Owned values derived from the last calls' borrowed arguments: they can be kept.
#[derive(Default)]
struct Last {
    /// Whether `range.would_block()` gave a token (`keep_wouldblock` keeps the token).
    range_could_fail: bool,
    /// `batch.start()` (`keep_batch` keeps the batch).
    batch_start: usize,
    /// How many pages `batch.asked()` yielded (`keep_asked` keeps the iterator).
    batch_asked: usize,
}

#[pin_data]
struct Owning {
    id: u64,
    #[pin]
    last: SpinLock<Last>,
}

#[vtable]
impl MmuNotifierOps for Owning {
    #[cfg(not(mglru_upstream_api))]
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn invalidate_range_start<'r>(
        &self,
        range: &InvalidateRange<'r>,
    ) -> Result<(), WouldBlock<'r>> {
        self.last.lock().range_could_fail = range.would_block().is_some();
        match range.would_block() {
            Some(token) if range.start() == 0 => Err(token),
            _ => Ok(()),
        }
    }

    fn clear_young(&self, _start: usize, _end: usize) -> bool {
        false
    }

    fn test_clear_young_fast_only(&self, batch: &mut YoungBatch<'_>) {
        let mut asked = 0;
        for i in batch.asked() {
            asked += 1;
            if self.id == 0 {
                batch.set_young(i);
            } else {
                batch.set_failed(i);
            }
        }
        let mut last = self.last.lock();
        last.batch_start = batch.start();
        last.batch_asked = asked;
    }
}

struct M;

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // Registering instantiates the operations table (and its const checks). (Only built,
        // never loaded: from a module's init, registering is refused with `ENODEV`.)
        let data = try_pin_init!(Owning {
            id: 0,
            last <- new_spinlock!(Last::default()),
        }? Error);
        let _ = KBox::pin_init(Registration::new_for_current(data), GFP_KERNEL);
        // With the upstream API (7.x): registering on a given `MmWithUser`; the registration
        // keeps an `ARef<Mm>` of it.
        #[cfg(mglru_upstream_api)]
        if let Some(mm) = current!().mm() {
            let data = try_pin_init!(Owning {
                id: 1,
                last <- new_spinlock!(Last::default()),
            }? Error);
            if let Ok(reg) = KBox::pin_init(Registration::new(mm, data), GFP_KERNEL) {
                let _: &kernel::mm::Mm = reg.mm();
            }
        }
        Ok(M)
    }
}
