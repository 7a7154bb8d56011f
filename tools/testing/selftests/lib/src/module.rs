// SPDX-License-Identifier: GPL-2.0
//! Loading and unloading kernel modules by syscall (no kmod needed).

use anyhow::{Context, Result};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Loads the module at `path` with `params` (`finit_module(2)`).
pub fn load(path: &Path, params: &str) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let params = CString::new(params).context("module params contain NUL")?;
    // SAFETY: valid fd and NUL-terminated parameter string for the call.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("finit_module {}", path.display()));
    }
    Ok(())
}

/// Unloads module `name` (`delete_module(2)`, non-blocking).
pub fn unload(name: &str) -> Result<()> {
    let c = CString::new(name).context("module name contains NUL")?;
    // SAFETY: NUL-terminated module name; O_NONBLOCK as rmmod does.
    let r = unsafe { libc::syscall(libc::SYS_delete_module, c.as_ptr(), libc::O_NONBLOCK) };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("delete_module {name}"));
    }
    Ok(())
}

/// Whether module `name` is loaded (`/sys/module/<name>/initstate`).
pub fn is_loaded(name: &str) -> bool {
    Path::new(&format!("/sys/module/{name}/initstate")).exists()
}

/// The `.ko` of an out-of-tree module of this project: `$MGLRU_MODULE_DIR`
/// (set by the test runner) or `rust/` next to the current directory.
pub fn project_module(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("MGLRU_MODULE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("rust"));
    dir.join(format!("{name}.ko"))
}

/// The `.ko` of a C test module of this project (`testmod/`):
/// `$MGLRU_TESTMOD_DIR` (set by the test runner) or `testmod/` next to the
/// current directory. Every flavour has them, base included.
pub fn project_testmod(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("MGLRU_TESTMOD_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("testmod"));
    dir.join(format!("{name}.ko"))
}
