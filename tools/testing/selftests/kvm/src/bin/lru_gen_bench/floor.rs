// SPDX-License-Identifier: GPL-2.0
//! The floor column's process: plain anonymous memory of the guest's size
//! in a memcg of its own, alive alongside the VM so that its passes can be
//! interleaved with the VM's.
//!
//! It must be another process: MGLRU's page-table walk finds an mm through
//! the memcg its owner task is in, so memory of the bench process charged
//! to another memcg would be walked (and cost time) in the VM's passes and
//! not at all in the floor's. The bench runs itself again
//! (`/proc/self/exe floor-child`) and moves the child into the floor memcg
//! before the child allocates anything.

use anyhow::{bail, Context, Result};
use mglru_selftest::kvm::{Backing, HostMem, PAGE_SIZE};
use mglru_selftest::memcg::Memcg;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The running floor process; killed when dropped.
pub struct Floor {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Floor {
    /// Starts the floor process in `cg` with `bytes` of memory, every page
    /// written once; its [`Floor::touch`] reads every `stride`-th page.
    pub fn spawn(cg: &Memcg, bytes: usize, stride: usize) -> Result<Floor> {
        let exe = std::env::current_exe().context("finding the bench's own binary")?;
        let mut child = Command::new(exe)
            .args(["floor-child", &bytes.to_string(), &stride.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the floor process")?;
        let stdin = child.stdin.take().context("floor stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("floor stdout")?);
        let mut f = Floor {
            child,
            stdin,
            stdout,
        };
        cg.write("cgroup.procs", &f.child.id().to_string())
            .context("moving the floor process into its memcg")?;
        f.ask("go", "ready")?;
        Ok(f)
    }

    fn ask(&mut self, cmd: &str, want: &str) -> Result<()> {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .context("writing to the floor process")?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .context("reading from the floor process")?;
        if line.trim_end() != want {
            bail!("the floor process answered {line:?} to {cmd:?} (it died? see its stderr)");
        }
        Ok(())
    }

    /// Has the process read every `stride`-th page of its memory.
    pub fn touch(&mut self) -> Result<()> {
        self.ask("touch", "ok")
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        // Our own child, by its handle; its memory goes with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side: waits for `go` (it is in its memcg then), maps and
/// writes `bytes`, answers `ready`; then reads every `stride`-th page per
/// `touch`, answering `ok`, until its input closes.
pub fn child_main(bytes: usize, stride: usize) -> Result<()> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut lines = stdin.lock().lines();
    let mut mem: Option<HostMem> = None;
    while let Some(line) = lines.next().transpose()? {
        match (line.as_str(), &mut mem) {
            ("go", None) => {
                let mut m = HostMem::new(bytes, Backing::Anon4k)?;
                m.fill(0x666c_6f6f);
                mem = Some(m);
                writeln!(out, "ready")?;
            }
            ("touch", Some(m)) => {
                for i in (0..m.pages()).step_by(stride.max(1)) {
                    m.read_u32_at(i * PAGE_SIZE)?;
                }
                writeln!(out, "ok")?;
            }
            (l, _) => bail!("floor process: unexpected {l:?}"),
        }
        out.flush()?;
    }
    Ok(())
}
