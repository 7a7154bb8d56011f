// SPDX-License-Identifier: GPL-2.0

//! Smallest out-of-tree Rust module of mglru-secondary.
//!
//! Proves that the test kernel's Rust support and the out-of-tree build work:
//! the smoke selftest loads it, looks for its init message and unloads it.

use kernel::prelude::*;

// 7.x's `module!` takes `authors`, 6.12's `author`.
#[cfg(not(mglru_upstream_api))]
module! {
    type: MglruSmoke,
    name: "mglru_smoke",
    author: "mglru-secondary developers",
    description: "Rust out-of-tree module smoke test",
    license: "GPL",
}

#[cfg(mglru_upstream_api)]
module! {
    type: MglruSmoke,
    name: "mglru_smoke",
    authors: ["mglru-secondary developers"],
    description: "Rust out-of-tree module smoke test",
    license: "GPL",
}

struct MglruSmoke {
    greeting: KVec<u8>,
}

impl kernel::Module for MglruSmoke {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let mut greeting = KVec::new();
        greeting.extend_from_slice(b"mglru-secondary", GFP_KERNEL)?;
        pr_info!("loaded ({} byte greeting)\n", greeting.len());
        Ok(Self { greeting })
    }
}

impl Drop for MglruSmoke {
    fn drop(&mut self) {
        pr_info!("unloaded ({} bytes freed)\n", self.greeting.len());
    }
}
