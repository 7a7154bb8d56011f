// SPDX-License-Identifier: GPL-2.0
//! Must not compile: a misc device whose open files own a borrow. An open file lives until its
//! last reference goes, which nothing ties to the borrowed data.
use core::marker::PhantomData;
use kernel::miscdevice::MiscDevice;
use kernel::prelude::*;

module! {
    type: M,
    name: "cf_misc_borrow",
    license: "GPL",
}

struct Dev<'a>(PhantomData<&'a u64>);

#[vtable]
impl<'a> MiscDevice for Dev<'a> {
    type Ptr = KBox<&'a u64>;
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn open() -> Result<KBox<&'a u64>> {
        Ok(KBox::new(&0, GFP_KERNEL)?)
    }
}

struct M;

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(M)
    }
}
