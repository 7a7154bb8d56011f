// SPDX-License-Identifier: GPL-2.0
//! The orchestrator's side of the child protocol ([`crate::roles`]):
//! spawning a child into its memcg, draining its stdout, waiting for its
//! `READY` and collecting its counts and violations into the tally.

use crate::opts::{vcpu_cpus_args, Opts};
use crate::roles::READY;
use crate::shared::Shared;
use anyhow::{Context, Result};
use mglru_selftest::memcg::Memcg;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a child may take to get ready.
pub const READY_WAIT: Duration = Duration::from_secs(120);

/// Starts this binary as a child of `role`, inside memcg `cg` (moved there
/// before exec, so that everything it allocates is charged there).
pub fn spawn_child(role: &str, cg: &Memcg, seed: u64, o: &Opts) -> Result<Child> {
    let procs = format!(
        "{}/{}/cgroup.procs",
        mglru_selftest::memcg::CGROUP_ROOT,
        &cg.path()[1..]
    );
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["--role", role, "--seed", &seed.to_string()])
        .args(["--guest-mem", &o.guest_mem.to_string()])
        .args(vcpu_cpus_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // Opened here (close-on-exec), written by the child between fork and
    // exec: "0" moves the writer itself.
    let procs_file = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .with_context(|| format!("opening {procs}"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&procs_file);
    // SAFETY: the closure only calls write(2), which is async-signal-safe,
    // on a descriptor that stays open until spawn() returns (`procs_file`
    // lives past it), and allocates nothing.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning the {role} child into {procs}"));
    drop(procs_file);
    child
}

/// A child process whose stdout a thread reads from spawn to EOF, so that
/// a chatty child (every cycle rewrites its counts) never blocks on a full
/// pipe; [`collect`] takes what it read.
pub struct Kid {
    pub child: Child,
    /// Returns the child's whole stdout but its `READY` line, at EOF.
    drain: Option<std::thread::JoinHandle<String>>,
    /// Gets a message when the child prints `READY`.
    ready: std::sync::mpsc::Receiver<()>,
    /// Set once the child's stdout closed (it exited or was killed).
    pub eof: Arc<AtomicBool>,
}

impl Kid {
    pub fn new(mut child: Child) -> Self {
        let (tx, ready) = std::sync::mpsc::channel();
        let eof = Arc::new(AtomicBool::new(false));
        let eof2 = Arc::clone(&eof);
        let drain = child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let mut line = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match out.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            for &b in &buf[..n] {
                                if b != b'\n' {
                                    line.push(b);
                                    continue;
                                }
                                let l = String::from_utf8_lossy(&line).into_owned();
                                line.clear();
                                if l == READY {
                                    let _ = tx.send(());
                                } else {
                                    text.push_str(&l);
                                    text.push('\n');
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                text.push_str(&String::from_utf8_lossy(&line));
                eof2.store(true, Ordering::SeqCst);
                text
            })
        });
        Self {
            child,
            drain,
            ready,
            eof,
        }
    }
}

/// Waits up to `wait_for` for the child's `READY` line; whether it came. A
/// child that does not get ready in time is killed (a violation); one that
/// exits first was not ready.
pub fn wait_ready(sh: &Shared, role: &str, kid: &mut Kid, wait_for: Duration) -> bool {
    match kid.ready.recv_timeout(wait_for) {
        Ok(()) => true,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => false,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let _ = kid.child.kill();
            sh.violation(
                "child",
                format!("{role} child not ready (no {READY}) in {wait_for:?}; killed"),
            );
            false
        }
    }
}

/// Collects a finished (or stopped) child's report into the tally; `killed`:
/// the caller sent it SIGKILL, so that is how it may end.
pub fn collect(sh: &Shared, role: &str, kid: Kid, wait_for: Duration, killed: bool) {
    let Kid {
        mut child, drain, ..
    } = kid;
    drop(child.stdin.take());
    let end = Instant::now() + wait_for;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    // The child is gone, so its stdout is closed (unless a grandchild
    // inherited it: the roles' own children get their own pipes or none).
    let text = drain.and_then(|d| d.join().ok()).unwrap_or_default();
    // Counts are cumulative: the last line of each wins.
    let mut counts = BTreeMap::new();
    for line in BufReader::new(text.as_bytes())
        .lines()
        .map_while(Result::ok)
    {
        if let Some(rest) = line.strip_prefix("COUNT ") {
            if let Some((name, n)) = rest.rsplit_once(' ') {
                counts.insert(name.to_owned(), n.parse().unwrap_or(0));
            }
        } else if let Some(rest) = line.strip_prefix("VIOLATION ") {
            let (kind, msg) = rest.split_once(':').unwrap_or(("child", rest));
            sh.violation(kind, format!("{role}:{msg}"));
        }
    }
    for (name, n) in counts {
        sh.count(&name, n);
    }
    match status {
        None => sh.violation(
            "child",
            format!("{role} child did not stop in {wait_for:?}; killed"),
        ),
        Some(s) if killed && s.signal() == Some(libc::SIGKILL) => {}
        Some(s) if !s.success() => sh.violation("child", format!("{role} child failed: {s}")),
        _ => {}
    }
}
