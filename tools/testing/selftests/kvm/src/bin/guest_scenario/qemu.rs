// SPDX-License-Identifier: GPL-2.0
//! The nested guest: Debian's QEMU with KVM (`-accel kvm`) in the test VM,
//! booting the project's kernel with the scenario's initramfs (memcached),
//! started inside a memcg and pinned to one CPU, with its console in a file,
//! a control channel on its second serial port and memcached's port
//! forwarded to the test VM's loopback by QEMU's user-mode network.

use crate::memcache::Client;
use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start the guest.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// The guest kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs from scripts/scenario-image.
    pub image: PathBuf,
    /// Guest RAM, MiB.
    pub mem_mib: u64,
    /// memcached's item memory, MiB.
    pub mc_mem_mib: u64,
    /// Port on the test VM's loopback forwarded to memcached.
    pub port: u16,
    /// The CPU QEMU (all its threads) runs on.
    pub cpu: usize,
    /// `cgroup.procs` of the memcg QEMU starts in.
    pub cgroup_procs: PathBuf,
    /// Directory for the console log and the control socket.
    pub dir: PathBuf,
}

/// A running guest; killed when dropped.
pub struct Guest {
    child: Child,
    console: PathBuf,
    ctl: Option<BufReader<UnixStream>>,
    /// When QEMU was started.
    pub started: Instant,
}

impl Guest {
    /// Starts QEMU. The child moves itself into the memcg and onto its CPU
    /// before it executes QEMU, so every page QEMU touches is charged to
    /// the memcg and no guest vCPU ever runs on another CPU (QEMU 7.2's
    /// multi-threaded TCG, which runs the test VM, corrupts nested guests
    /// whose vCPUs run on both of its CPUs: Documentation/testing.md).
    pub fn start(cfg: &GuestConfig) -> Result<Self> {
        for f in [&cfg.kernel, &cfg.image] {
            if !f.is_file() {
                bail!("{} missing (make scenario builds it)", f.display());
            }
        }
        std::fs::create_dir_all(&cfg.dir)?;
        let console = cfg.dir.join("guest-console.log");
        let sock = cfg.dir.join("guest-ctl.sock");
        match std::fs::remove_file(&sock) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", sock.display()));
            }
            _ => {}
        }
        let qemu_log = std::fs::File::create(cfg.dir.join("qemu.log"))?;
        let append = format!(
            "console=ttyS0 panic=-1 rdinit=/init quiet kunit.enable=0 transparent_hugepage=never \
             MC_MEM={} MC_PORT=11211",
            cfg.mc_mem_mib
        );
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "kvm", "-cpu", "host", "-smp", "1"])
            .args(["-m", &format!("{}M", cfg.mem_mib)])
            .args([
                "-nodefaults",
                "-no-reboot",
                "-display",
                "none",
                "-monitor",
                "none",
            ])
            .arg("-kernel")
            .arg(&cfg.kernel)
            .arg("-initrd")
            .arg(&cfg.image)
            .args(["-append", &append])
            .args(["-serial", &format!("file:{}", console.display())])
            .args([
                "-chardev",
                &format!("socket,id=ctl,path={},server=on,wait=off", sock.display()),
            ])
            .args(["-serial", "chardev:ctl"])
            .args([
                "-netdev",
                &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{}-:11211", cfg.port),
            ])
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
            .stdin(Stdio::null())
            .stdout(qemu_log.try_clone()?)
            .stderr(qemu_log);
        let procs = CString::new(cfg.cgroup_procs.as_os_str().as_encoded_bytes())?;
        let cpu = cfg.cpu;
        if cpu >= libc::CPU_SETSIZE as usize {
            bail!("cpu {cpu} out of range");
        }
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the child between fork and exec. It
        // only makes async-signal-safe calls (prctl, getppid, open, write,
        // close, sched_setaffinity) and reads errno (a thread-local integer;
        // `Error::last_os_error` and `from_raw_os_error` do not allocate),
        // on memory prepared before the fork (`procs`, moved in) or on its
        // own stack; it allocates and locks nothing. `CPU_SET` cannot
        // panic: `cpu` was checked against CPU_SETSIZE above.
        unsafe {
            cmd.pre_exec(move || {
                // QEMU dies with the thread that started it (a test killed
                // by its timeout must not leave a guest running); if that
                // already happened, do not start it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                let err = if n < 0 {
                    std::io::Error::last_os_error()
                } else {
                    std::io::Error::from_raw_os_error(libc::EIO)
                };
                libc::close(fd);
                if n != 2 {
                    return Err(err);
                }
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .context("starting qemu-system-x86_64 (run 'make deps')")?;
        let mut g = Self {
            child,
            console,
            ctl: None,
            started: Instant::now(),
        };
        // Connect to the control channel before the guest boots: QEMU drops
        // what the guest writes there while nobody is connected, and the
        // guest's first line is its "READY".
        let deadline = Instant::now() + Duration::from_secs(60);
        while g.ctl.is_none() {
            g.check_running()?;
            match UnixStream::connect(&sock) {
                Ok(s) => g.ctl = Some(BufReader::new(s)),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => bail!(
                    "QEMU's control socket {}: {e}\n{}",
                    sock.display(),
                    g.tail(20)
                ),
            }
        }
        Ok(g)
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `n` lines of the guest's console and QEMU's own output,
    /// for error messages.
    pub fn tail(&self, n: usize) -> String {
        let mut s = String::new();
        for (what, p) in [
            ("guest console", self.console.clone()),
            ("qemu", self.console.with_file_name("qemu.log")),
        ] {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s += &format!("---- last {n} lines of the {what} ({}) ----\n", p.display());
            for l in &lines[lines.len().saturating_sub(n)..] {
                s += l;
                s.push('\n');
            }
        }
        s
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("QEMU exited ({st})\n{}", self.tail(30));
        }
        Ok(())
    }

    /// Waits until the guest's /init says "READY" on the control channel
    /// and memcached answers through the forwarded port; returns the
    /// connected client.
    pub fn wait_ready(
        &mut self,
        port: u16,
        timeout: Duration,
    ) -> Result<Client<std::net::TcpStream>> {
        let deadline = Instant::now() + timeout;
        // Kept across reads: a read that times out may leave part of a line.
        let mut l = String::new();
        loop {
            let ctl = self.ctl.as_mut().context("control channel not connected")?;
            ctl.get_ref()
                .set_read_timeout(Some(Duration::from_secs(1)))?;
            match ctl.read_line(&mut l) {
                Ok(0) => bail!("the guest closed its control channel\n{}", self.tail(30)),
                Ok(_) if l.trim_end() == "READY" => break,
                Ok(_) if l.ends_with('\n') => l.clear(),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e).context("reading the guest's control channel"),
            }
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "QEMU exited ({st}) before the guest was ready\n{}",
                    self.tail(30)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the guest was not ready within {}s\n{}",
                    timeout.as_secs(),
                    self.tail(30)
                );
            }
        }
        // Until memcached listens, QEMU's user-mode network accepts the
        // connection and then closes it.
        loop {
            self.check_running()?;
            if let Ok(mut c) =
                Client::connect(&format!("127.0.0.1:{port}"), Duration::from_secs(10))
            {
                if c.version().is_ok() {
                    // From now on a request may wait for the host to swap
                    // guest memory in, under TCG.
                    c.set_timeout(Duration::from_secs(120))?;
                    return Ok(c);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "memcached in the guest did not answer within {}s\n{}",
                    timeout.as_secs(),
                    self.tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Sends `cmd` on the control channel; the answer up to its `END`,
    /// waiting at most a minute for each line.
    pub fn control(&mut self, cmd: &str) -> Result<String> {
        self.control_timeout(cmd, Duration::from_secs(60))
    }

    /// [`Guest::control`] with `timeout` for each line of the answer.
    pub fn control_timeout(&mut self, cmd: &str, timeout: Duration) -> Result<String> {
        self.check_running()?;
        let ctl = self.ctl.as_mut().context("control channel not connected")?;
        ctl.get_ref().set_read_timeout(Some(timeout))?;
        writeln!(ctl.get_mut(), "{cmd}")?;
        let mut out = String::new();
        loop {
            let mut l = String::new();
            if ctl
                .read_line(&mut l)
                .context("reading the guest's control channel")?
                == 0
            {
                bail!("the guest closed its control channel");
            }
            let t = l.trim_end_matches(['\r', '\n']);
            if t == "END" {
                return Ok(out);
            }
            out += t;
            out.push('\n');
        }
    }

    /// Stops QEMU (SIGKILL) and reaps it.
    pub fn stop(mut self) -> Result<()> {
        self.kill()
    }

    fn kill(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            let _ = self.child.kill();
        }
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
