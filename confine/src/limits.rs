//! Resource limits of a decky, and the rlimits that enforce them where no
//! cgroup does.
//!
//! Open files and processes are always rlimits (`RLIMIT_NOFILE`,
//! `RLIMIT_NPROC`; the latter counts every process of the decky's uid, which
//! is exact because the uid is the decky's alone). Memory and CPU belong to
//! cgroup v2 (`memory.max`, `cpu.max`); on a host without a delegated
//! cgroup v2 tree memory falls back to `RLIMIT_AS` (address space, a coarser
//! bound that some runtimes which reserve large mappings do not tolerate)
//! and CPU is not limited. Core dumps are always off: a dump of a hostile
//! process is the attacker's file written where they choose. No file may
//! grow past the decky's disk budget (`RLIMIT_FSIZE`); the budget of its
//! whole working directory is watched by its shepherd.

use rustix::process::{Resource, Rlimit, setrlimit};
use serde::{Deserialize, Serialize};

/// The limits one decky runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// Most open file descriptors per process.
    pub open_files: u64,
    /// Most processes (and threads) of the decky's uid.
    pub processes: u64,
    /// Most memory in bytes.
    pub memory_bytes: u64,
    /// CPU share in percent of one core (100 = one whole core).
    pub cpu_percent: u32,
    /// Largest file it may write (`RLIMIT_FSIZE`; a write past it fails
    /// and raises `SIGXFSZ`).
    #[serde(default = "default_file_bytes")]
    pub file_bytes: u64,
}

fn default_file_bytes() -> u64 {
    1 << 30
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            open_files: 1024,
            processes: 256,
            memory_bytes: 512 << 20,
            cpu_percent: 100,
            file_bytes: default_file_bytes(),
        }
    }
}

fn set(resource: Resource, value: u64) -> std::io::Result<()> {
    setrlimit(
        resource,
        Rlimit {
            current: Some(value),
            maximum: Some(value),
        },
    )
    .map_err(std::io::Error::from)
}

impl ResourceLimits {
    /// Lower this process's rlimits (soft and hard, so the decky cannot
    /// raise them again); `memory_by_rlimit` adds `RLIMIT_AS` where no
    /// cgroup bounds memory.
    pub fn apply_rlimits(&self, memory_by_rlimit: bool) -> std::io::Result<()> {
        set(Resource::Core, 0)?;
        set(Resource::Nofile, self.open_files)?;
        set(Resource::Nproc, self.processes)?;
        set(Resource::Fsize, self.file_bytes)?;
        if memory_by_rlimit {
            set(Resource::As, self.memory_bytes)?;
        }
        Ok(())
    }

    /// `cpu.max` for this share: quota and period in microseconds.
    pub fn cpu_max(&self) -> String {
        format!("{} 100000", u64::from(self.cpu_percent.max(1)) * 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_share_renders_as_quota_over_a_100ms_period() {
        let l = ResourceLimits {
            cpu_percent: 50,
            ..ResourceLimits::default()
        };
        assert_eq!(l.cpu_max(), "50000 100000");
        let l = ResourceLimits {
            cpu_percent: 250,
            ..ResourceLimits::default()
        };
        assert_eq!(l.cpu_max(), "250000 100000");
    }

    #[test]
    fn rlimits_apply_in_a_child_and_cannot_be_raised_again() {
        // In a child process, so this test process keeps its own limits.
        if std::env::var_os("DECNET_CONFINE_RLIMIT_CHILD").is_some() {
            let l = ResourceLimits {
                open_files: 64,
                processes: 10_000,
                memory_bytes: 1 << 30,
                cpu_percent: 100,
                file_bytes: 4 << 20,
            };
            l.apply_rlimits(true).unwrap();
            let fsize = rustix::process::getrlimit(Resource::Fsize);
            assert_eq!(fsize.maximum, Some(4 << 20));
            let nofile = rustix::process::getrlimit(Resource::Nofile);
            assert_eq!(nofile.current, Some(64));
            assert_eq!(nofile.maximum, Some(64));
            assert_eq!(rustix::process::getrlimit(Resource::Core).maximum, Some(0));
            assert_eq!(
                rustix::process::getrlimit(Resource::As).maximum,
                Some(1 << 30)
            );
            if rustix::process::geteuid().as_raw() != 0 {
                assert!(set(Resource::Nofile, 128).is_err());
            }
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let st = std::process::Command::new(exe)
            .args([
                "--exact",
                "limits::tests::rlimits_apply_in_a_child_and_cannot_be_raised_again",
                "--nocapture",
            ])
            .env("DECNET_CONFINE_RLIMIT_CHILD", "1")
            .status()
            .unwrap();
        assert!(st.success());
    }
}
