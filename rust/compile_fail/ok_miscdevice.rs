// SPDX-License-Identifier: GPL-2.0
//! Control: the misc device of the compile-fail cases, its open files owning `Send + Sync` data,
//! compiles, and so does registering it.
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::c_str;
use kernel::miscdevice::{MiscDevice, MiscDeviceRegistration};
use kernel::prelude::*;

module! {
    type: M,
    name: "cf_ok_misc",
    license: "GPL",
}

struct Dev;

#[vtable]
impl MiscDevice for Dev {
    type Ptr = KBox<AtomicU64>;
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn open() -> Result<KBox<AtomicU64>> {
        Ok(KBox::new(AtomicU64::new(0), GFP_KERNEL)?)
    }

    fn ioctl(calls: &AtomicU64, _cmd: u32, _arg: usize) -> Result<isize> {
        Ok(calls.fetch_add(1, Ordering::Relaxed) as isize)
    }
}

struct M {
    _dev: Pin<KBox<MiscDeviceRegistration<Dev>>>,
}

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let dev = KBox::pin_init(
            MiscDeviceRegistration::register(c_str!("cf_ok_misc"), 0o600),
            GFP_KERNEL,
        )?;
        Ok(M { _dev: dev })
    }
}
