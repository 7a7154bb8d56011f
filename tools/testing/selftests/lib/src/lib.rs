// SPDX-License-Identifier: GPL-2.0
//! Shared library of the mglru-secondary selftests.
//!
//! Every selftest binary under `tools/testing/selftests/` is built on this
//! crate: KTAP output ([`ktap`]), feature checks ([`features`]), cgroup v2
//! memory-controller helpers ([`memcg`]), `/sys/kernel/debug/lru_gen` parsing
//! and forced aging ([`lru_gen`]), a minimal KVM guest on kvm-ioctls
//! ([`kvm`]), timing ([`timing`]) and the host-side option checks of the
//! binaries ([`usage`]).

pub mod aging;
pub mod features;
pub mod ktap;
pub mod kunit;
pub mod kvm;
pub mod lru_gen;
pub mod lru_mirror;
pub mod memcg;
pub mod module;
pub mod pagemap;
pub mod probe;
pub mod sys;
pub mod timing;
pub mod units;
pub mod usage;

pub use anyhow::{bail, Context, Error, Result};
