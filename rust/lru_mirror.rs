// SPDX-License-Identifier: GPL-2.0

//! lru_mirror: a software secondary MMU for testing page aging.
//!
//! What `lib/test_hmm.c` is to HMM, this is to aging: a "device" that maps a range of a process's
//! memory into its own page table and accesses pages *through that table*, setting its own
//! accessed bits and never the host PTE's. Page aging can only learn about those accesses by
//! asking the device, through its MMU notifier.
//!
//! Userspace opens `/dev/lru_mirror` (mode 0600) and uses ioctls (see [`uapi`]):
//!
//! - `MIRROR {start, len, flags}`: fault the range in (`pin_user_pages_fast()`, pages are unpinned
//!   right away) and map it in the device. One mirror per open file. Flag `NO_FAST_OP` registers
//!   the notifier *without* `test_clear_young_fast_only()`, like a secondary MMU that cannot age
//!   fast. While it runs (registering and faulting in up to 1 GiB) the file is *mirroring*:
//!   `MIRROR`, `ACCESS` and `UNMIRROR` on it fail with `EBUSY`, the other ioctls work.
//! - `ACCESS {start, len}`: access the device-mapped pages of the range through the device;
//!   returns how many pages were accessed (unmapped ones are not).
//! - `CONFIG flags`: `FAIL_FAST` makes the fast-only op answer "failed" for every asked page
//!   (simulated contention);
//!   `SLOW_INVALIDATE` makes every invalidation that hits the mirror spin for a while after
//!   unmapping (widens race windows for tests);
//!   `FAIL_AFTER` with a page count `k` in bits 32..47 makes it answer the first `k` asked pages
//!   of each batch only, clearing what it finds young there, and fail the rest, as a secondary
//!   MMU that stops at the first entry it cannot handle (one answer then has both young and
//!   failed pages).
//! - `STATS`: per-op counters; `UNMIRROR`: drop the mirror (closing the file does too).
//!
//! The notifier forgets pages on invalidation (munmap, `MADV_DONTNEED`, migration, ...) and on
//! `release`, and only ever reports young for pages it currently maps. Mapping follows the
//! begin/retry protocol of `mmu_interval_read_begin()`/`mmu_interval_read_retry()`: an
//! invalidation bumps a sequence count in `invalidate_range_start()` and again in
//! `invalidate_range_end()`, and `MIRROR` commits its pages, under a spinlock that invalidations
//! also take, only if no invalidation started or was running since it faulted them in; so the
//! device never maps a page whose host mapping is gone. The aging ops use atomics only (no lock).
//! Bad ioctl arguments fail with `EINVAL`/`EFAULT`/`EBUSY` and change nothing; a `MIRROR` that
//! fails for another reason (see [`uapi::MIRROR`]) leaves the file without a mirror too. Opening
//! fails with `ENODEV` while the module's init runs. The file's state,
//! the mirror's page table and its notifier are charged to the memory cgroup of the process that
//! opens or mirrors.
//!
//! 64-bit only: addresses and lengths are handled as `usize`.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
#[cfg(mglru_upstream_api)]
use kernel::transmute::{AsBytes, FromBytes};
#[cfg(not(mglru_upstream_api))]
use kernel::types::{AsBytes, FromBytes};
use kernel::{
    alloc::KVVec,
    bindings,
    miscdevice::{MiscDevice, MiscDeviceRegistration},
    mm::mmu_notifier::{InvalidateRange, MmuNotifierOps, Registration, WouldBlock, YoungBatch},
    new_condvar, new_mutex, new_spinlock,
    page::{PAGE_SHIFT, PAGE_SIZE},
    prelude::*,
    sync::{Arc, CondVar, Mutex, SpinLock},
    types::ScopeGuard,
    uaccess::UserSlice,
};

// The uapi is in u64 and ranges are handled as usize.
const _: () = assert!(usize::BITS == 64, "lru_mirror supports 64-bit kernels only");

// 7.x's `module!` takes `authors`, 6.12's `author`.
#[cfg(not(mglru_upstream_api))]
module! {
    type: LruMirrorModule,
    name: "lru_mirror",
    author: "mglru-secondary developers",
    description: "Software secondary MMU that exercises fast-only page aging",
    license: "GPL",
}

#[cfg(mglru_upstream_api)]
module! {
    type: LruMirrorModule,
    name: "lru_mirror",
    authors: ["mglru-secondary developers"],
    description: "Software secondary MMU that exercises fast-only page aging",
    license: "GPL",
}

/// The ioctl interface, shared with `tools/testing/selftests/mm` (which redefines it).
pub mod uapi {
    use kernel::ioctl::{_IO, _IOR, _IOW};

    /// Argument of [`MIRROR`].
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct MirrorArgs {
        /// First address; page aligned.
        pub start: u64,
        /// Length in bytes; page aligned, non-zero, at most [`MAX_MIRROR`].
        pub len: u64,
        /// [`MIRROR_NO_FAST_OP`] or 0.
        pub flags: u64,
    }

    /// Argument of [`ACCESS`].
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct AccessArgs {
        /// First address; page aligned, inside the mirror.
        pub start: u64,
        /// Length in bytes; page aligned, non-zero, inside the mirror.
        pub len: u64,
    }

    /// Result of [`STATS`]: counters since the file was opened.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct Stats {
        /// `test_clear_young_fast_only()` calls (one per batch).
        pub fast_calls: u64,
        /// Pages asked about in them.
        pub fast_pages: u64,
        /// Asked pages answered young.
        pub fast_young: u64,
        /// Asked pages answered "failed".
        pub fast_failed: u64,
        /// `clear_young()` and `clear_flush_young()` calls, and those that answered young.
        pub slow_calls: u64,
        /// See `slow_calls`.
        pub slow_young: u64,
        /// `test_young()` calls.
        pub test_young_calls: u64,
        /// `invalidate_range_start()` calls that hit the mirror, and pages they unmapped.
        pub invalidations: u64,
        /// See `invalidations`.
        pub invalidated_pages: u64,
        /// Mapped mirrors that `release()` tore down (the process's mm went away, or the mirror
        /// was dropped): once per mirror, although `release()` may be called twice for it.
        pub releases: u64,
        /// Pages the device maps now.
        pub mapped_pages: u64,
        /// Pages accessed through `ACCESS`.
        pub accessed_pages: u64,
    }

    /// ioctl type byte.
    pub const TYPE: u32 = b'm' as u32;
    /// Map a range; `EBUSY` if the file has a mirror or is mirroring, `EINVAL` for bad arguments,
    /// `EFAULT` if the argument cannot be read or the range is not mapped. It also fails with
    /// `ENOMEM`, `EAGAIN` (invalidations kept racing with it), `EINTR` or a restart of the call
    /// (a signal while it waits for an invalidation or faults in), `ENODEV` (the module is being
    /// unloaded by force) or another error of `pin_user_pages_fast()`; the file then has no
    /// mirror.
    pub const MIRROR: u32 = _IOW::<MirrorArgs>(TYPE, 0x40);
    /// Drop the mirror; `EINVAL` if there is none, `EBUSY` while mirroring.
    pub const UNMIRROR: u32 = _IO(TYPE, 0x41);
    /// Access pages through the device; `EINVAL` without a mirror, `EBUSY` while mirroring.
    pub const ACCESS: u32 = _IOW::<AccessArgs>(TYPE, 0x42);
    /// Set the failure knobs [`CONFIG_FAIL_FAST`] or [`CONFIG_FAIL_AFTER`] (0 clears both).
    pub const CONFIG: u32 = _IOW::<u64>(TYPE, 0x43);
    /// Read [`Stats`].
    pub const STATS: u32 = _IOR::<Stats>(TYPE, 0x44);

    /// `MirrorArgs::flags`: register without the fast-only op.
    pub const MIRROR_NO_FAST_OP: u64 = 1;
    /// `CONFIG` flag: the fast-only op answers "failed".
    pub const CONFIG_FAIL_FAST: u64 = 1;
    /// `CONFIG` flag: ranges of more than [`config_fail_after_pages`] pages are answered for that
    /// many pages, then "failed".
    pub const CONFIG_FAIL_AFTER: u64 = 2;
    /// `CONFIG` flag: invalidations that hit the mirror spin for a while after unmapping.
    pub const CONFIG_SLOW_INVALIDATE: u64 = 4;
    /// Shift of the page count of [`CONFIG_FAIL_AFTER`] in the `CONFIG` argument.
    pub const CONFIG_FAIL_AFTER_SHIFT: u32 = 32;
    /// Mask of the page count of [`CONFIG_FAIL_AFTER`] (after shifting).
    pub const CONFIG_FAIL_AFTER_MASK: u64 = 0xffff;

    /// The page count of a `CONFIG` argument with [`CONFIG_FAIL_AFTER`].
    pub const fn config_fail_after_pages(flags: u64) -> u64 {
        (flags >> CONFIG_FAIL_AFTER_SHIFT) & CONFIG_FAIL_AFTER_MASK
    }
    /// Largest mirror.
    pub const MAX_MIRROR: u64 = 1 << 30;
}

// SAFETY: plain integers; every bit pattern is valid.
unsafe impl FromBytes for uapi::MirrorArgs {}
// SAFETY: as above.
unsafe impl FromBytes for uapi::AccessArgs {}
// SAFETY: plain integers without padding.
unsafe impl AsBytes for uapi::Stats {}

/// Highest user address on x86-64 with 5-level paging.
const USER_END: u64 = 1 << 56;
/// Attempts of `MIRROR` to map its range while invalidations keep racing with it (waits for
/// running invalidations do not count).
const MAP_RETRIES: usize = 64;
/// Pages pinned per `pin_user_pages_fast()` call.
const PIN_BATCH: usize = 512;

const MAPPED: u8 = 1 << 0;
const ACCESSED: u8 = 1 << 1;

/// Counters and knobs shared by an open file and its mirror's notifier.
#[derive(Default)]
struct Shared {
    fail_fast: AtomicBool,
    slow_invalidate: AtomicBool,
    /// With [`uapi::CONFIG_FAIL_AFTER`]: pages answered per range before failing; 0 when off.
    fail_after: AtomicU64,
    fast_calls: AtomicU64,
    fast_pages: AtomicU64,
    fast_young: AtomicU64,
    fast_failed: AtomicU64,
    slow_calls: AtomicU64,
    slow_young: AtomicU64,
    test_young_calls: AtomicU64,
    invalidations: AtomicU64,
    invalidated_pages: AtomicU64,
    releases: AtomicU64,
    accessed_pages: AtomicU64,
}

fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The sequence state of invalidations, under [`MirrorState::inv`].
#[derive(Default)]
struct InvState {
    /// Bumped by every `invalidate_range_start()` and `invalidate_range_end()` that hits the
    /// mirror, and by `release()`.
    seq: u64,
    /// Invalidations that hit the mirror and have started but not ended.
    active: u64,
}

/// The device's page table: one byte of state per page of `[start, start + npages pages)`.
///
/// # Invariants
///
/// `pages.len() == npages`; a page is young for the device only if it is `MAPPED | ACCESSED`.
/// A page becomes `MAPPED` only under `inv`, when no invalidation hitting the mirror has started
/// since its host mapping was faulted in and none is active; every invalidation and `release`
/// clears both bits under `inv`. Hence the device never maps a page whose host mapping was torn
/// down after the device mapped it.
#[pin_data]
struct MirrorState {
    start: usize,
    npages: usize,
    pages: KVVec<AtomicU8>,
    #[pin]
    inv: SpinLock<InvState>,
    /// Notified when an invalidation ends, or the mirror is released: `MIRROR` sleeps on it, with
    /// `inv`, while an invalidation is running.
    #[pin]
    inv_done: CondVar,
    /// Set when `MIRROR` committed the mapping; cleared by the first `release()`.
    live: AtomicBool,
    shared: Arc<Shared>,
}

impl MirrorState {
    fn new(start: usize, npages: usize, shared: Arc<Shared>) -> Result<impl PinInit<Self, Error>> {
        // Up to 256 KiB: let it come from vmalloc when kmalloc has no such block. Userspace
        // decides how big it is and how long it lives: charge it to its memory cgroup.
        let mut pages = KVVec::with_capacity(npages, GFP_KERNEL_ACCOUNT)?;
        for _ in 0..npages {
            pages.push(AtomicU8::new(0), GFP_KERNEL_ACCOUNT)?;
        }
        // INVARIANT: `pages.len() == npages`, and no page is `MAPPED` before `map_all` commits.
        Ok(try_pin_init!(Self {
            start,
            npages,
            pages,
            inv <- new_spinlock!(InvState::default()),
            inv_done <- new_condvar!(),
            live: AtomicBool::new(false),
            shared,
        }? Error))
    }

    fn end(&self) -> usize {
        self.start + (self.npages << PAGE_SHIFT)
    }

    /// Indices of the mirror's pages that intersect `[start, end)`.
    fn indices(&self, start: usize, end: usize) -> core::ops::Range<usize> {
        let lo = start.max(self.start);
        let hi = end.min(self.end());
        if lo >= hi {
            return 0..0;
        }
        let first = (lo - self.start) >> PAGE_SHIFT;
        let last = (hi - 1 - self.start) >> PAGE_SHIFT;
        first..last + 1
    }

    fn unmap(&self, start: usize, end: usize) -> u64 {
        let mut n = 0;
        for i in self.indices(start, end) {
            if self.pages[i].swap(0, Ordering::AcqRel) & MAPPED != 0 {
                n += 1;
            }
        }
        n
    }

    /// Young if a mapped page in the range was accessed; with `clear`, clears what it reports.
    fn young(&self, start: usize, end: usize, clear: bool) -> bool {
        let mut young = false;
        for i in self.indices(start, end) {
            let v = if clear {
                self.pages[i]
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                        (v == MAPPED | ACCESSED).then_some(MAPPED)
                    })
                    .unwrap_or(0)
            } else {
                self.pages[i].load(Ordering::Acquire)
            };
            young |= v == MAPPED | ACCESSED;
        }
        young
    }

    fn mapped(&self) -> u64 {
        self.pages
            .iter()
            .filter(|p| p.load(Ordering::Relaxed) & MAPPED != 0)
            .count() as u64
    }

    /// Idempotent, and may run concurrently with itself (see [`MmuNotifierOps::release`]):
    /// only the first call for a mapped mirror counts.
    fn release(&self) {
        let mut inv = self.inv.lock();
        self.unmap(self.start, self.end());
        inv.seq += 1;
        drop(inv);
        self.inv_done.notify_all();
        if self.live.swap(false, Ordering::AcqRel) {
            inc(&self.shared.releases, 1);
        }
    }

    fn invalidate_start(&self, range: &InvalidateRange<'_>) {
        if self.indices(range.start(), range.end()).is_empty() {
            return;
        }
        let mut inv = self.inv.lock();
        inv.seq += 1;
        inv.active += 1;
        let n = self.unmap(range.start(), range.end());
        if self.shared.slow_invalidate.load(Ordering::Relaxed) {
            spin_a_while();
        }
        drop(inv);
        inc(&self.shared.invalidations, 1);
        inc(&self.shared.invalidated_pages, n);
    }

    fn invalidate_end(&self, range: &InvalidateRange<'_>) {
        if self.indices(range.start(), range.end()).is_empty() {
            return;
        }
        let mut inv = self.inv.lock();
        inv.seq += 1;
        // Every end has its start: mmu_notifier_register() takes mm_take_all_locks(), which
        // keeps a registration from landing between an invalidation's start and end. (A start
        // without its end happens when the subscription is unlinked in between, by the exit
        // path or by unregistering; that is terminal for the mirror.)
        if inv.active == 0 {
            pr_warn!("invalidate_range_end() without its start\n");
        } else {
            inv.active -= 1;
        }
        drop(inv);
        // Wakes `MIRROR` if it waits for this invalidation (takes only the wait queue's spinlock:
        // fine where the range may not block).
        self.inv_done.notify_all();
    }

    /// Faults the whole mirror in and maps it, retrying while invalidations race with it
    /// (`mmu_interval_read_begin()`/`mmu_interval_read_retry()`): the pages are committed only if
    /// no invalidation was running or started between reading the sequence count and committing,
    /// so every page's host mapping still exists when the device maps it.
    ///
    /// Sleeps while an invalidation runs; a signal ends it with `ERESTARTSYS` (the system call is
    /// restarted or fails with `EINTR`, as the signal's disposition says), and nothing is mapped.
    fn map_all(&self) -> Result {
        for _ in 0..MAP_RETRIES {
            let seq = {
                let mut inv = self.inv.lock();
                // Wait for running invalidations instead of faulting in for nothing.
                while inv.active != 0 {
                    if self.inv_done.wait_interruptible(&mut inv) {
                        return Err(ERESTARTSYS);
                    }
                }
                inv.seq
            };
            if kernel::current!().signal_pending() {
                return Err(ERESTARTSYS);
            }
            fault_in(self.start, self.npages)?;
            let inv = self.inv.lock();
            if inv.seq == seq && inv.active == 0 {
                // INVARIANT: no invalidation overlapped the fault-in, so every page's host
                // mapping exists now; later invalidations unmap under `inv`.
                for p in self.pages.iter() {
                    p.store(MAPPED, Ordering::Release);
                }
                self.live.store(true, Ordering::Release);
                return Ok(());
            }
        }
        Err(EAGAIN)
    }

    fn slow_young(&self, start: usize, end: usize) -> bool {
        let young = self.young(start, end, true);
        inc(&self.shared.slow_calls, 1);
        inc(&self.shared.slow_young, u64::from(young));
        young
    }

    fn test_young(&self, address: usize) -> bool {
        inc(&self.shared.test_young_calls, 1);
        self.young(address, address + 1, false)
    }
}

/// Busy-waits for a moment without sleeping (invalidations may not sleep): the window that
/// [`uapi::CONFIG_SLOW_INVALIDATE`] opens for tests.
fn spin_a_while() {
    for _ in 0..200_000 {
        core::hint::spin_loop();
    }
}

/// The mirror as a secondary MMU that can age fast.
#[pin_data]
struct FastMirror {
    #[pin]
    st: MirrorState,
}

/// The same mirror registered without the fast-only op (`MIRROR_NO_FAST_OP`).
#[pin_data]
struct SlowMirror {
    #[pin]
    st: MirrorState,
}

/// Implements [`MmuNotifierOps`] for a mirror type: the operations both
/// registrations share, plus the extra ones given (a macro, so that
/// `#[vtable]` sees every method it must put in the C table).
macro_rules! mirror_ops {
    ($ty:ty { $($extra:tt)* }) => {
        #[vtable]
        impl MmuNotifierOps for $ty {
            // With the upstream API, `#[vtable]` names this module (`OwnerModule`).
            #[cfg(not(mglru_upstream_api))]
            const OWNER: &'static ThisModule = &THIS_MODULE;

            fn release(&self) {
                self.st.release()
            }

            fn invalidate_range_start<'a>(
                &self,
                range: &InvalidateRange<'a>,
            ) -> Result<(), WouldBlock<'a>> {
                self.st.invalidate_start(range);
                Ok(())
            }

            fn invalidate_range_end(&self, range: &InvalidateRange<'_>) {
                self.st.invalidate_end(range)
            }

            fn clear_flush_young(&self, start: usize, end: usize) -> bool {
                self.st.slow_young(start, end)
            }

            fn clear_young(&self, start: usize, end: usize) -> bool {
                self.st.slow_young(start, end)
            }

            fn test_young(&self, address: usize) -> bool {
                self.st.test_young(address)
            }

            $($extra)*
        }
    };
}

mirror_ops!(FastMirror {
    fn test_clear_young_fast_only(&self, batch: &mut YoungBatch<'_>) {
        let st = &self.st;
        let shared = &st.shared;
        let fail_every = shared.fail_fast.load(Ordering::Relaxed);
        // With `FAIL_AFTER k`: answer the first k asked pages, fail the rest.
        let after = shared.fail_after.load(Ordering::Relaxed);
        let (mut asked, mut young, mut failed) = (0u64, 0u64, 0u64);
        for i in batch.asked() {
            asked += 1;
            let Some(addr) = batch.addr(i) else { continue };
            if fail_every || (after != 0 && asked > after) {
                batch.set_failed(i);
                failed += 1;
                continue;
            }
            if st.young(addr, addr + PAGE_SIZE, batch.should_clear()) {
                batch.set_young(i);
                young += 1;
            }
        }
        inc(&shared.fast_calls, 1);
        inc(&shared.fast_pages, asked);
        inc(&shared.fast_young, young);
        inc(&shared.fast_failed, failed);
    }
});

mirror_ops!(SlowMirror {});

enum Mirror {
    Fast(Pin<KBox<Registration<FastMirror>>>),
    Slow(Pin<KBox<Registration<SlowMirror>>>),
}

impl Mirror {
    /// Registers a mirror of `[start, start + npages pages)` for the current process and maps
    /// it. Dropping it unregisters.
    fn new(start: usize, npages: usize, flags: u64, shared: Arc<Shared>) -> Result<Self> {
        let state = MirrorState::new(start, npages, shared)?;
        // The notifier is registered before faulting in, so no invalidation is missed.
        let mirror = if flags & uapi::MIRROR_NO_FAST_OP != 0 {
            Mirror::Slow(KBox::pin_init(
                Registration::new_for_current(try_pin_init!(SlowMirror { st <- state }? Error)),
                GFP_KERNEL_ACCOUNT,
            )?)
        } else {
            Mirror::Fast(KBox::pin_init(
                Registration::new_for_current(try_pin_init!(FastMirror { st <- state }? Error)),
                GFP_KERNEL_ACCOUNT,
            )?)
        };
        mirror.state().map_all()?;
        Ok(mirror)
    }

    fn state(&self) -> &MirrorState {
        match self {
            Mirror::Fast(r) => &r.data().st,
            Mirror::Slow(r) => &r.data().st,
        }
    }
}

/// What an open file mirrors.
enum Slot {
    /// Nothing.
    Empty,
    /// A `MIRROR` is registering and faulting in, without holding [`Session::mirror`].
    Mirroring,
    /// A mapped mirror.
    Mapped(Mirror),
}

impl Slot {
    /// The mapped mirror: `EINVAL` if there is none, `EBUSY` while one is being set up.
    fn mapped(&self) -> Result<&Mirror> {
        match self {
            Slot::Empty => Err(EINVAL),
            Slot::Mirroring => Err(EBUSY),
            Slot::Mapped(m) => Ok(m),
        }
    }
}

/// One open file.
#[pin_data]
struct Session {
    /// Held briefly: never while registering, faulting in or unregistering.
    #[pin]
    mirror: Mutex<Slot>,
    shared: Arc<Shared>,
}

/// Faults `[start, start + npages pages)` in, as a device fault would, without keeping pins.
fn fault_in(start: usize, npages: usize) -> Result {
    let mut pages: KVec<*mut bindings::page> = KVec::with_capacity(PIN_BATCH, GFP_KERNEL)?;
    for _ in 0..PIN_BATCH {
        pages.push(core::ptr::null_mut(), GFP_KERNEL)?;
    }
    let mut done = 0;
    while done < npages {
        let want = (npages - done).min(PIN_BATCH);
        let addr = start + (done << PAGE_SHIFT);
        // SAFETY: `pages` has room for `want` entries; the address range is user memory of the
        // current task (pin_user_pages_fast() checks it and fails for anything else).
        let got =
            unsafe { bindings::pin_user_pages_fast(addr, want as i32, 0, pages.as_mut_ptr()) };
        if got < 0 {
            return Err(Error::from_errno(got));
        }
        if got == 0 {
            return Err(EFAULT);
        }
        // SAFETY: the first `got` entries were filled with pinned pages by the call above.
        unsafe { bindings::unpin_user_pages(pages.as_mut_ptr(), got as usize) };
        done += got as usize;
    }
    Ok(())
}

fn page_aligned(x: u64) -> bool {
    x & (PAGE_SIZE as u64 - 1) == 0
}

impl Session {
    fn mirror(&self, args: uapi::MirrorArgs) -> Result<isize> {
        let end = args.start.checked_add(args.len).ok_or(EINVAL)?;
        if args.len == 0
            || !page_aligned(args.start)
            || !page_aligned(args.len)
            || args.len > uapi::MAX_MIRROR
            || end > USER_END
            || args.flags & !uapi::MIRROR_NO_FAST_OP != 0
        {
            return Err(EINVAL);
        }
        {
            let mut slot = self.mirror.lock();
            if !matches!(*slot, Slot::Empty) {
                return Err(EBUSY);
            }
            *slot = Slot::Mirroring;
        }
        // Every way out leaves `Mirroring`: back to `Empty` unless the mirror is installed.
        let mirroring = ScopeGuard::new(|| *self.mirror.lock() = Slot::Empty);
        let start = args.start as usize;
        let npages = (args.len as usize) >> PAGE_SHIFT;
        // Faulting in 1 GiB takes a while: without the mutex, so that the file's other ioctls
        // answer meanwhile. A mirror that failed is dropped (unregistered) in there, unlocked too.
        let mirror = Mirror::new(start, npages, args.flags, self.shared.clone())?;
        mirroring.dismiss();
        *self.mirror.lock() = Slot::Mapped(mirror);
        Ok(0)
    }

    fn unmirror(&self) -> Result<isize> {
        let mirror = {
            let mut slot = self.mirror.lock();
            slot.mapped()?;
            core::mem::replace(&mut *slot, Slot::Empty)
        };
        // Unregistering waits for running callbacks: not under the mutex.
        drop(mirror);
        Ok(0)
    }

    fn access(&self, args: uapi::AccessArgs) -> Result<isize> {
        let slot = self.mirror.lock();
        let st = slot.mapped()?.state();
        let end = args.start.checked_add(args.len).ok_or(EINVAL)?;
        let mirror_end = (st.start + (st.npages << PAGE_SHIFT)) as u64;
        if args.len == 0
            || !page_aligned(args.start)
            || !page_aligned(args.len)
            || args.start < st.start as u64
            || end > mirror_end
        {
            return Err(EINVAL);
        }
        let mut n = 0u64;
        for i in st.indices(args.start as usize, end as usize) {
            let r = st.pages[i].fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & MAPPED != 0).then_some(v | ACCESSED)
            });
            n += u64::from(r.is_ok());
        }
        inc(&self.shared.accessed_pages, n);
        Ok(n as isize)
    }

    fn config(&self, flags: u64) -> Result<isize> {
        let count_bits = uapi::CONFIG_FAIL_AFTER_MASK << uapi::CONFIG_FAIL_AFTER_SHIFT;
        let known = uapi::CONFIG_FAIL_FAST
            | uapi::CONFIG_FAIL_AFTER
            | uapi::CONFIG_SLOW_INVALIDATE
            | count_bits;
        let fail_fast = flags & uapi::CONFIG_FAIL_FAST != 0;
        let fail_after = flags & uapi::CONFIG_FAIL_AFTER != 0;
        let pages = uapi::config_fail_after_pages(flags);
        if flags & !known != 0 || (fail_fast && fail_after) || fail_after != (pages != 0) {
            return Err(EINVAL);
        }
        let s = &self.shared;
        s.fail_after.store(pages, Ordering::Relaxed);
        s.fail_fast.store(fail_fast, Ordering::Relaxed);
        s.slow_invalidate
            .store(flags & uapi::CONFIG_SLOW_INVALIDATE != 0, Ordering::Relaxed);
        Ok(0)
    }

    fn stats(&self) -> uapi::Stats {
        let s = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        uapi::Stats {
            fast_calls: get(&s.fast_calls),
            fast_pages: get(&s.fast_pages),
            fast_young: get(&s.fast_young),
            fast_failed: get(&s.fast_failed),
            slow_calls: get(&s.slow_calls),
            slow_young: get(&s.slow_young),
            test_young_calls: get(&s.test_young_calls),
            invalidations: get(&s.invalidations),
            invalidated_pages: get(&s.invalidated_pages),
            releases: get(&s.releases),
            mapped_pages: self
                .mirror
                .lock()
                .mapped()
                .map_or(0, |m| m.state().mapped()),
            accessed_pages: get(&s.accessed_pages),
        }
    }
}

struct LruMirror;

impl LruMirror {
    /// A new open file.
    fn open_session() -> Result<Pin<KBox<Session>>> {
        let shared = Arc::new(Shared::default(), GFP_KERNEL_ACCOUNT)?;
        KBox::pin_init(
            pin_init!(Session {
                mirror <- new_mutex!(Slot::Empty),
                shared,
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    fn ioctl_session(session: Pin<&Session>, cmd: u32, arg: usize) -> Result<isize> {
        match cmd {
            uapi::MIRROR => {
                let size = core::mem::size_of::<uapi::MirrorArgs>();
                let args = user_slice(arg, size).reader().read()?;
                session.mirror(args)
            }
            uapi::UNMIRROR => session.unmirror(),
            uapi::ACCESS => {
                let size = core::mem::size_of::<uapi::AccessArgs>();
                let args = user_slice(arg, size).reader().read()?;
                session.access(args)
            }
            uapi::CONFIG => {
                let flags = user_slice(arg, 8).reader().read::<u64>()?;
                session.config(flags)
            }
            uapi::STATS => {
                let stats = session.stats();
                let size = core::mem::size_of::<uapi::Stats>();
                user_slice(arg, size).writer().write(&stats)?;
                Ok(0)
            }
            _ => Err(ENOTTY),
        }
    }
}

/// The user memory of an ioctl's argument `arg`, `len` bytes.
fn user_slice(arg: usize, len: usize) -> UserSlice {
    #[cfg(mglru_upstream_api)]
    let arg = kernel::uaccess::UserPtr::from_addr(arg);
    UserSlice::new(arg, len)
}

/// The series' own misc device abstraction (6.12): it refuses opens until the module is live.
#[cfg(not(mglru_upstream_api))]
#[vtable]
impl MiscDevice for LruMirror {
    type Ptr = Pin<KBox<Session>>;
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn open() -> Result<Pin<KBox<Session>>> {
        Self::open_session()
    }

    fn ioctl(session: Pin<&Session>, cmd: u32, arg: usize) -> Result<isize> {
        Self::ioctl_session(session, cmd, arg)
    }
}

/// Upstream's misc device abstraction: `#[vtable]` names this module as the file operations'
/// owner, and opening is not refused while the init runs.
///
/// What makes that sound here is the init: nothing after registering the device can fail, so
/// once a file can be opened the init succeeds and the module stays for as long as the file holds
/// its reference. That is the rule (a module whose init fails is freed whatever its references):
/// no fallible step after registering the device. Refusing opens in `open` would not be enough
/// after a failing step: a refused open still puts its module reference (`fops_put()` in
/// `do_dentry_open()`, reading `owner` from the module's memory) after `misc_mtx` is released,
/// while a failing init may deregister the device, return and have the module freed.
///
/// `open` still refuses opens until the init is done (`ENODEV`, as the series' own abstraction
/// on 6.12 does), so that both bases behave the same; the check is harmless, not required.
#[cfg(mglru_upstream_api)]
#[vtable]
impl MiscDevice for LruMirror {
    type Ptr = Pin<KBox<Session>>;

    fn open(
        _file: &kernel::fs::File,
        _misc: &MiscDeviceRegistration<Self>,
    ) -> Result<Pin<KBox<Session>>> {
        if !kernel::module::this_module::<LruMirrorModule>().init_done() {
            return Err(ENODEV);
        }
        Self::open_session()
    }

    fn ioctl(
        session: Pin<&Session>,
        _file: &kernel::fs::File,
        cmd: u32,
        arg: usize,
    ) -> Result<isize> {
        Self::ioctl_session(session, cmd, arg)
    }
}

struct LruMirrorModule {
    _dev: Pin<KBox<MiscDeviceRegistration<LruMirror>>>,
}

impl kernel::Module for LruMirrorModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // Mode 0600: set explicitly with the series' abstraction; upstream's has no mode option,
        // and a misc device without one gets 0600 from devtmpfs.
        #[cfg(not(mglru_upstream_api))]
        let dev = MiscDeviceRegistration::register(kernel::c_str!("lru_mirror"), 0o600);
        #[cfg(mglru_upstream_api)]
        let dev = MiscDeviceRegistration::register(kernel::miscdevice::MiscDeviceOptions {
            name: c"lru_mirror",
        });
        // The last fallible step: nothing after registering the device may fail (see `open`).
        let dev = KBox::pin_init(dev, GFP_KERNEL)?;
        pr_info!("/dev/lru_mirror ready\n");
        Ok(Self { _dev: dev })
    }
}
