// SPDX-License-Identifier: GPL-2.0
//! KTAP output in the kselftest conventions (`Documentation/dev-tools/ktap.rst`).
//!
//! ```no_run
//! use mglru_selftest::ktap::Ktap;
//! let mut t = Ktap::new(2);
//! t.check("answer", if 6 * 7 == 42 { Ok(()) } else { Err("bad math") });
//! t.skip("needs_feature", "feature X not present");
//! t.finish();
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether this process printed a plan: after it, skipping the whole
/// plan would print a second one and hide whatever went wrong.
static PLANNED: AtomicBool = AtomicBool::new(false);

/// kselftest exit codes (`tools/testing/selftests/kselftest.h`).
pub const KSFT_PASS: i32 = 0;
/// At least one test failed.
pub const KSFT_FAIL: i32 = 1;
/// Every test was skipped.
pub const KSFT_SKIP: i32 = 4;

/// One KTAP test plan being reported on stdout.
///
/// Invariant: `done <= planned` unless the test miscounted, which `finish`
/// reports as a failure.
pub struct Ktap {
    planned: usize,
    done: usize,
    pass: usize,
    fail: usize,
    skip: usize,
}

fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    // Output goes to a serial port: flush per line so a crash loses nothing.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

impl Ktap {
    /// Prints the KTAP header and the plan of `planned` tests.
    pub fn new(planned: usize) -> Self {
        PLANNED.store(true, Ordering::SeqCst);
        emit("TAP version 13");
        emit(&format!("1..{planned}"));
        Self {
            planned,
            done: 0,
            pass: 0,
            fail: 0,
            skip: 0,
        }
    }

    /// Prints the whole plan as skipped and exits with `KSFT_SKIP`.
    ///
    /// Only before [`Ktap::new`]: whether the environment has what a test
    /// needs is decided before the plan.  Called after it, this is a bug
    /// of the test (a set-up error turned into a skip) and fails instead.
    pub fn skip_all(reason: &str) -> ! {
        if PLANNED.load(Ordering::SeqCst) {
            Self::bail_out(&format!("skip after the plan was printed: {reason}"));
        }
        emit("TAP version 13");
        emit(&format!("1..0 # SKIP {reason}"));
        std::process::exit(KSFT_SKIP)
    }

    /// The environment lacks a prerequisite (`what`: KVM, debugfs, a
    /// memcg controller, ...): on the project's test VM, whose kernels all
    /// have it (`MGLRU_FLAVOR` set by `scripts/vm-run`), that is a failure
    /// (`Bail out!`); on any other machine the whole plan is skipped.
    pub fn lacks(what: &str) -> ! {
        match crate::features::flavor() {
            Ok(None) => Self::skip_all(what),
            Ok(Some(f)) => Self::bail_out(&format!("the {f:?} flavour's kernel lacks: {what}")),
            Err(e) => Self::bail_out(&format!("{e:#}")),
        }
    }

    /// Stops the run with a KTAP `Bail out!` line and exits with
    /// `KSFT_FAIL`: for a set-up step that failed where it must work.
    pub fn bail_out(reason: &str) -> ! {
        if !PLANNED.swap(true, Ordering::SeqCst) {
            emit("TAP version 13");
            emit("1..1");
        }
        emit(&format!("Bail out! {reason}"));
        std::process::exit(KSFT_FAIL)
    }

    /// Prints a diagnostic: each line prefixed with `# `.
    pub fn diag(&self, msg: &str) {
        for l in msg.lines() {
            emit(&format!("# {l}"));
        }
    }

    /// Reports a pass.
    pub fn ok(&mut self, name: &str) {
        self.done += 1;
        self.pass += 1;
        emit(&format!("ok {} {name}", self.done));
    }

    /// Reports a failure with its reason as diagnostics.
    pub fn fail(&mut self, name: &str, why: &str) {
        self.diag(&format!("{name}: {why}"));
        self.done += 1;
        self.fail += 1;
        emit(&format!("not ok {} {name}", self.done));
    }

    /// Reports a skip; `reason` must say what the environment lacks.
    pub fn skip(&mut self, name: &str, reason: &str) {
        self.done += 1;
        self.skip += 1;
        emit(&format!("ok {} {name} # SKIP {reason}", self.done));
    }

    /// Reports `result`: pass on `Ok`, failure with the error chain on `Err`.
    pub fn check<E: std::fmt::Display>(&mut self, name: &str, result: Result<(), E>) -> bool {
        match result {
            Ok(()) => {
                self.ok(name);
                true
            }
            Err(e) => {
                self.fail(name, &format!("{e:#}"));
                false
            }
        }
    }

    /// Number of failures so far.
    pub fn failures(&self) -> usize {
        self.fail
    }

    /// Prints the totals line and exits with the kselftest exit code.
    pub fn finish(self) -> ! {
        let mut fail = self.fail;
        if self.done != self.planned {
            emit(&format!(
                "# Planned {} tests but ran {}",
                self.planned, self.done
            ));
            fail += 1;
        }
        emit(&format!(
            "# Totals: pass:{} fail:{} xfail:0 xpass:0 skip:{} error:0",
            self.pass, fail, self.skip
        ));
        let code = if fail > 0 {
            KSFT_FAIL
        } else if self.skip > 0 && self.pass == 0 {
            KSFT_SKIP
        } else {
            KSFT_PASS
        };
        std::process::exit(code)
    }
}
