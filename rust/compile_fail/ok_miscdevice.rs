// SPDX-License-Identifier: GPL-2.0
//! Control: the misc device of the compile-fail cases, its open files owning `Send + Sync` data,
//! compiles, and so does registering it.
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::miscdevice::{MiscDevice, MiscDeviceRegistration};
use kernel::prelude::*;

module! {
    type: M,
    name: "cf_ok_misc",
    license: "GPL",
}

struct Dev;

#[cfg(not(mglru_upstream_api))]
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

/// The same with upstream's misc device abstraction (7.x).
#[cfg(mglru_upstream_api)]
#[vtable]
impl MiscDevice for Dev {
    type Ptr = KBox<AtomicU64>;

    fn open(
        _file: &kernel::fs::File,
        _misc: &MiscDeviceRegistration<Self>,
    ) -> Result<KBox<AtomicU64>> {
        Ok(KBox::new(AtomicU64::new(0), GFP_KERNEL)?)
    }

    fn ioctl(calls: &AtomicU64, _file: &kernel::fs::File, _cmd: u32, _arg: usize) -> Result<isize> {
        Ok(calls.fetch_add(1, Ordering::Relaxed) as isize)
    }
}

struct M {
    _dev: Pin<KBox<MiscDeviceRegistration<Dev>>>,
}

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        #[cfg(not(mglru_upstream_api))]
        let dev = MiscDeviceRegistration::register(kernel::c_str!("cf_ok_misc"), 0o600);
        #[cfg(mglru_upstream_api)]
        let dev = MiscDeviceRegistration::register(kernel::miscdevice::MiscDeviceOptions {
            name: c"cf_ok_misc",
        });
        let dev = KBox::pin_init(dev, GFP_KERNEL)?;
        Ok(M { _dev: dev })
    }
}
