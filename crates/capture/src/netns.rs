//! Named network namespaces (`ip netns`, bound under /run/netns), commands run inside them,
//! and running Rust code in one from a thread that has `setns(2)`'d into it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

use crate::{CaptureError, run};

const NETNS_DIR: &str = "/run/netns";

fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Creates the namespace and brings its loopback up. Errors if it already exists; use
/// [`replace`] to start over from an empty one.
pub fn create(name: &str) -> Result<(), CaptureError> {
    if exists(name) {
        return Err(CaptureError::NetnsExists(name.to_string()));
    }
    run(Command::new("ip").args(["netns", "add", name]), None)?;
    run(
        Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]),
        None,
    )?;
    Ok(())
}

/// Deletes the namespace if present, then creates it empty.
pub fn replace(name: &str) -> Result<(), CaptureError> {
    delete(name)?;
    create(name)
}

/// Deletes the namespace (its links, addresses and iptables go with it). Absent is fine.
pub fn delete(name: &str) -> Result<(), CaptureError> {
    if !exists(name) {
        return Ok(());
    }
    run(Command::new("ip").args(["netns", "del", name]), None)?;
    Ok(())
}

/// Whether `/run/netns/NAME` exists.
pub fn exists(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && path(name).exists()
}

/// The named namespaces, sorted.
pub fn list() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// `ip netns exec NAME PROGRAM` as a Command; the caller adds args, env and stdio.
/// `ip netns exec` execs, so the child's pid is the program's pid.
pub fn command(name: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", name, program]);
    c
}

/// `ip netns exec NAME setpriv --reuid UID --regid GID --clear-groups PROGRAM`: how a
/// sidecar runs as the proxy user (1337) so capture's owner rules skip its traffic. Both
/// `ip netns exec` and `setpriv` exec, so the child's pid is the program's pid. The program
/// must be readable by that uid (not under /root, e.g. a pyenv shim).
pub fn command_as(name: &str, uid: u32, gid: u32, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", name, "setpriv"]);
    c.args([
        "--reuid",
        &uid.to_string(),
        "--regid",
        &gid.to_string(),
        "--clear-groups",
    ]);
    c.arg(program);
    c
}

/// Runs `f` on a new thread that has entered the namespace with `setns(2)`, and returns
/// its result. Sockets created inside stay in that namespace when handed back, so a test
/// can bind a listener in a pod's netns and use it from anywhere.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T, CaptureError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let setns_err = |source| CaptureError::Setns {
        name: name.to_string(),
        source,
    };
    let ns = File::open(path(name)).map_err(setns_err)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: `ns` is an open namespace fd for the whole call; setns only changes
            // this (short-lived) thread's network namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(setns_err(std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
