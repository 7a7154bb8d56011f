// SPDX-License-Identifier: GPL-2.0
//! Must not compile: a misc device whose open files own something that is not `Send`. `open()`
//! and `release()` may run on different threads.
use core::marker::PhantomData;
use kernel::miscdevice::MiscDevice;
use kernel::prelude::*;

module! {
    type: M,
    name: "cf_misc_not_send",
    license: "GPL",
}

/// Shareable, but tied to the thread that made it.
struct ThreadBound(PhantomData<*mut ()>);

// SAFETY: `ThreadBound` has no state; only `Send` is in question here.
unsafe impl Sync for ThreadBound {}

struct Dev;

#[cfg(not(mglru_upstream_api))]
#[vtable]
impl MiscDevice for Dev {
    type Ptr = KBox<ThreadBound>;
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn open() -> Result<KBox<ThreadBound>> {
        Ok(KBox::new(ThreadBound(PhantomData), GFP_KERNEL)?)
    }
}

/// The same with upstream's misc device abstraction (7.x), whose `Ptr` is `Send + Sync` too.
#[cfg(mglru_upstream_api)]
#[vtable]
impl MiscDevice for Dev {
    type Ptr = KBox<ThreadBound>;

    fn open(
        _file: &kernel::fs::File,
        _misc: &kernel::miscdevice::MiscDeviceRegistration<Self>,
    ) -> Result<KBox<ThreadBound>> {
        Ok(KBox::new(ThreadBound(PhantomData), GFP_KERNEL)?)
    }
}

struct M;

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(M)
    }
}
