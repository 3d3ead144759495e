//! Memory and process-count limits through cgroups (v1 controllers, or v2 where it is mounted
//! at `/sys/fs/cgroup`). The caller creates one cgroup per sandbox beside its own, the helper
//! joins it before dropping privileges, and the caller kills what is left and removes it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;
use crate::sys;

/// One sandbox's cgroups.
#[derive(Debug)]
pub(crate) struct Cgroup {
    /// The directories created, one per hierarchy (one on v2).
    dirs: Vec<PathBuf>,
    /// The hierarchy holding the pids controller (listing its procs finds every task).
    pids_dir: PathBuf,
    /// The memory controller's directory.
    memory_dir: PathBuf,
    v2: bool,
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> Error {
    Error::Cgroup(format!("{what} `{}`: {e}", path.display()))
}

/// Mount point of the v1 hierarchy carrying `controller`, from `/proc/self/mountinfo`.
fn v1_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split(' ');
        let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
        let has = options.split(',').any(|o| o == controller);
        (fstype == "cgroup" && has).then(|| left.split(' ').nth(4).map(PathBuf::from))?
    })
}

/// This process's path in the hierarchy with `controller` (v1) or the unified one (`""`).
fn own_path(proc_cgroup: &str, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_owned())
    })
}

fn join(base: &Path, rel: &str) -> PathBuf {
    base.join(rel.trim_start_matches('/'))
}

/// Where a `Sandbox`'s cgroups go: beside the caller's own, in the hierarchies found once (from
/// `/proc/self/mountinfo` and `/proc/self/cgroup`) when its first sandbox starts.
#[derive(Debug, Clone)]
pub(crate) enum CgroupLayout {
    /// v1: the caller's directories in the memory and pids hierarchies.
    V1 {
        memory_parent: PathBuf,
        pids_parent: PathBuf,
        /// Whether `memory.memsw.limit_in_bytes` exists (swap accounting).
        memsw: bool,
    },
    /// v2 mounted at `/sys/fs/cgroup`: the caller's directory.
    V2 { parent: PathBuf },
}

impl CgroupLayout {
    /// Reads the mount table and this process's cgroups.
    pub(crate) fn find() -> Result<Self, Error> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::Cgroup(format!("cannot read mountinfo: {e}")))?;
        let proc_cgroup = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| Error::Cgroup(format!("cannot read /proc/self/cgroup: {e}")))?;
        let unified_root = mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup") && l.contains(" - cgroup2 "));
        if unified_root {
            let root = Path::new("/sys/fs/cgroup");
            let parent = join(root, &own_path(&proc_cgroup, "").unwrap_or_default());
            return Ok(Self::V2 { parent });
        }
        let memory_mount = v1_mount(&mountinfo, "memory")
            .ok_or_else(|| Error::Cgroup("no memory cgroup controller mounted".to_owned()))?;
        let pids_mount = v1_mount(&mountinfo, "pids")
            .ok_or_else(|| Error::Cgroup("no pids cgroup controller mounted".to_owned()))?;
        let memory_parent = join(
            &memory_mount,
            &own_path(&proc_cgroup, "memory").unwrap_or_default(),
        );
        let pids_parent = join(
            &pids_mount,
            &own_path(&proc_cgroup, "pids").unwrap_or_default(),
        );
        let memsw = memory_parent.join("memory.memsw.limit_in_bytes").exists();
        Ok(Self::V1 {
            memory_parent,
            pids_parent,
            memsw,
        })
    }
}

impl Cgroup {
    /// Creates the cgroups named `name` with the given limits.
    pub(crate) fn create(
        layout: &CgroupLayout,
        name: &str,
        memory_bytes: u64,
        pids: u64,
    ) -> Result<Self, Error> {
        let (memory_parent, pids_parent, memsw) = match layout {
            CgroupLayout::V2 { parent } => {
                return Self::create_v2(parent, name, memory_bytes, pids);
            }
            CgroupLayout::V1 {
                memory_parent,
                pids_parent,
                memsw,
            } => (memory_parent, pids_parent, *memsw),
        };
        let memory_dir = memory_parent.join(name);
        let pids_dir = pids_parent.join(name);
        let mut cg = Cgroup {
            dirs: Vec::new(),
            pids_dir: pids_dir.clone(),
            memory_dir: memory_dir.clone(),
            v2: false,
        };
        for dir in [&memory_dir, &pids_dir] {
            fs::create_dir(dir).map_err(|e| io_err("cannot create cgroup", dir, &e))?;
            cg.dirs.push(dir.clone());
        }
        write(
            &memory_dir.join("memory.limit_in_bytes"),
            &memory_bytes.to_string(),
        )?;
        // Without this, swap would extend the limit.
        if memsw {
            write(
                &memory_dir.join("memory.memsw.limit_in_bytes"),
                &memory_bytes.to_string(),
            )?;
        }
        write(&pids_dir.join("pids.max"), &pids.to_string())?;
        Ok(cg)
    }

    fn create_v2(parent: &Path, name: &str, memory_bytes: u64, pids: u64) -> Result<Self, Error> {
        let dir = parent.join(name);
        fs::create_dir(&dir).map_err(|e| io_err("cannot create cgroup", &dir, &e))?;
        let cg = Cgroup {
            dirs: vec![dir.clone()],
            pids_dir: dir.clone(),
            memory_dir: dir.clone(),
            v2: true,
        };
        write(&dir.join("memory.max"), &memory_bytes.to_string())?;
        // Present only where the parent delegates the memory controller with swap accounting.
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            write(&swap, "0")?;
        }
        write(&dir.join("pids.max"), &pids.to_string())?;
        Ok(cg)
    }

    /// The files the freshly forked, single-threaded helper writes `0` (itself) into to join.
    ///
    /// On v1 that is `tasks`: moving the one calling thread skips the cgroup threadgroup rwsem,
    /// whose writer side (taken by any `cgroup.procs` write) waits a full RCU grace period —
    /// 10-20 ms on a loaded machine, most of a sandbox's start-up. The helper has exactly one
    /// thread between `fork` and `exec`, so moving that thread moves the whole process, and
    /// everything it starts later is born inside. v2 has no such file for a domain cgroup
    /// (`cgroup.threads` needs threaded mode), so it keeps `cgroup.procs`.
    pub(crate) fn join_files(&self) -> Vec<PathBuf> {
        let file = if self.v2 { "cgroup.procs" } else { "tasks" };
        self.dirs.iter().map(|d| d.join(file)).collect()
    }

    /// Whether the kernel killed a task of this cgroup for lack of memory.
    pub(crate) fn oom_killed(&self) -> bool {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        counter(&self.memory_dir.join(file), key) > 0
    }

    /// Whether a fork failed on the pids limit.
    pub(crate) fn pids_limit_hit(&self) -> bool {
        counter(&self.pids_dir.join("pids.events"), "max") > 0
    }

    /// Kills every task still in the cgroup, repeatedly, until none is left.
    pub(crate) fn kill_all(&self) {
        if self.v2 && fs::write(self.pids_dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for _ in 0..200 {
            let procs = fs::read_to_string(self.pids_dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = sys::kill(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills what is left and removes the directories (retrying while exiting tasks linger).
    pub(crate) fn remove(&self) {
        self.kill_all();
        for dir in &self.dirs {
            for _ in 0..200 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    fs::write(path, value).map_err(|e| io_err("cannot write", path, &e))
}

fn counter(path: &Path, key: &str) -> u64 {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_mounts_and_own_paths() {
        let mi = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n";
        assert_eq!(
            v1_mount(mi, "pids"),
            Some(PathBuf::from("/sys/fs/cgroup/pids"))
        );
        assert_eq!(v1_mount(mi, "cpu"), None);
        let pc = "8:pids:/\n4:memory:/a/b\n0::/u\n";
        assert_eq!(own_path(pc, "memory").as_deref(), Some("/a/b"));
        assert_eq!(own_path(pc, "").as_deref(), Some("/u"));
    }
}
