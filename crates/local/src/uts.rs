//! A UTS namespace per pod, so `hostname` in a pod is the pod name (as in
//! Kubernetes). Like `ip netns` does for network namespaces, each is kept
//! alive by a bind mount on `/run/halyard-uts/NETNS` and entered with
//! setns(2) by every process of the pod.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use crate::RuntimeError;

const UTS_DIR: &str = "/run/halyard-uts";

/// Where the UTS namespace of the pod in network namespace `netns` is bound.
pub fn path(netns: &str) -> PathBuf {
    PathBuf::from(UTS_DIR).join(netns)
}

/// Create the pod's UTS namespace with `hostname`, bound at [`path`].
pub fn create(netns: &str, hostname: &str) -> Result<(), RuntimeError> {
    let target = path(netns);
    delete(netns);
    std::fs::create_dir_all(UTS_DIR).map_err(|e| RuntimeError::Io(UTS_DIR.into(), e))?;
    File::create(&target).map_err(|e| RuntimeError::Io(target.clone(), e))?;
    let name = hostname.to_string();
    let bind_at = target.clone();
    // unshare(CLONE_NEWUTS) moves only the calling thread: do it in a
    // short-lived one, name the host, and pin the namespace with a bind mount.
    let made = std::thread::spawn(move || -> std::io::Result<()> {
        let os_err = std::io::Error::last_os_error;
        // SAFETY: unshare/sethostname/mount with valid arguments, on this
        // thread only; the thread exits right after.
        unsafe {
            if libc::unshare(libc::CLONE_NEWUTS) != 0 {
                return Err(os_err());
            }
            if libc::sethostname(name.as_ptr().cast(), name.len()) != 0 {
                return Err(os_err());
            }
        }
        let src = std::ffi::CString::new(format!(
            "/proc/self/task/{}/ns/uts",
            // SAFETY: gettid has no preconditions.
            unsafe { libc::gettid() }
        ))?;
        let dst = std::ffi::CString::new(bind_at.as_os_str().as_encoded_bytes())?;
        // SAFETY: both paths are valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(os_err());
        }
        Ok(())
    })
    .join()
    .map_err(|_| RuntimeError::Command("UTS namespace thread panicked".into()))?;
    made.map_err(|e| RuntimeError::Io(target, e))
}

/// Unmount and remove the pod's UTS namespace (absent is fine).
pub fn delete(netns: &str) {
    let target = path(netns);
    if let Ok(c) = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2 of a path we bound; failure (not mounted) is fine.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
    let _ = std::fs::remove_file(target);
}

/// Remove every UTS namespace whose network namespace starts with `prefix-`.
pub fn teardown(prefix: &str) {
    let mine = format!("{prefix}-");
    for e in std::fs::read_dir(UTS_DIR).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(&mine) {
            delete(&name);
        }
    }
}

/// An open handle on the pod's UTS namespace, if it has one, to enter
/// (with [`enter`]) in a child between fork and exec.
pub fn open(netns: &str) -> Option<File> {
    // Only a bound namespace (nsfs), not an empty placeholder file.
    File::open(path(netns))
        .ok()
        .filter(|f| is_nsfs(f.as_raw_fd()))
}

fn is_nsfs(fd: RawFd) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    // SAFETY: a zeroed statfs is a valid value; fstatfs fills it from an open fd.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::fstatfs(fd, &mut st) == 0 && st.f_type as i64 == NSFS_MAGIC
    }
}

/// Join the UTS namespace `fd` (async-signal-safe: for `pre_exec`).
pub fn enter(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: setns on a valid namespace fd.
    if unsafe { libc::setns(fd, libc::CLONE_NEWUTS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Make `cmd` start in the pod's UTS namespace (when it has one).
pub fn apply(cmd: &mut std::process::Command, netns: &str) {
    use std::os::unix::process::CommandExt;
    if let Some(file) = open(netns) {
        let fd = file.as_raw_fd();
        // SAFETY: the closure only calls setns (async-signal-safe); `file`
        // moves into it, so the fd stays open until the Command is dropped.
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &file;
                enter(fd)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_has_its_own_hostname() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: UTS namespaces need root");
            return;
        }
        let ns = format!("hytuts-{}", std::process::id());
        let host_before = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
        create(&ns, "web-v1-0").expect("create");
        let mut cmd = std::process::Command::new("cat");
        cmd.arg("/proc/sys/kernel/hostname");
        apply(&mut cmd, &ns);
        let out = cmd.output().expect("cat");
        teardown("hytuts");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "web-v1-0");
        assert!(!path(&ns).exists());
        let host_after = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
        assert_eq!(host_before, host_after, "the host's hostname changed");
    }
}
