//! Memory, CPU and process limits through cgroup v2, where the host has a
//! unified hierarchy and hands the agent a subtree of its own (systemd:
//! `Delegate=yes` on the agent's unit).
//!
//! Layout under the agent's own cgroup `G` (a cgroup with processes cannot
//! also hand controllers to children, so the agent first moves itself to a
//! leaf):
//!
//! ```text
//! G/supervisor/          the agent and its helpers
//! G/deckies/<name>/      one per decky: memory.max, cpu.max, pids.max
//! ```
//!
//! A host on cgroup v1 or a hybrid layout (no controllers on the unified
//! mount), or a cgroup not delegated to the agent, makes [`CgroupTree::detect`]
//! say why; the agent then falls back to rlimits (see
//! [`crate::limits`]) and reports which one is in force.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::limits::ResourceLimits;

/// The agent's delegated cgroup v2 subtree for deckies.
#[derive(Clone, Debug)]
pub struct CgroupTree {
    deckies: PathBuf,
    cpu: bool,
}

fn write_file(path: &Path, value: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// The cgroup path (relative to the mount) from `/proc/self/cgroup` text:
/// the `0::PATH` line of the unified hierarchy.
pub fn own_cgroup(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
}

impl CgroupTree {
    /// Find the agent's cgroup under `/sys/fs/cgroup` and prepare it (see
    /// [`CgroupTree::prepare`]); the error says why cgroup limits are not
    /// available on this host.
    pub fn detect() -> Result<CgroupTree, String> {
        let me = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        Self::prepare(Path::new("/sys/fs/cgroup"), &me, std::process::id())
    }

    /// Prepare the layout under the unified mount `mount` for the process
    /// `pid` whose `/proc/self/cgroup` text is `proc_self_cgroup`.
    pub fn prepare(mount: &Path, proc_self_cgroup: &str, pid: u32) -> Result<CgroupTree, String> {
        if !mount.join("cgroup.controllers").exists() {
            return Err(format!(
                "{} is not a unified cgroup v2 hierarchy (the host runs cgroup v1 or a hybrid layout)",
                mount.display()
            ));
        }
        let own = own_cgroup(proc_self_cgroup).ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
        let own_dir = mount.join(own.trim_start_matches('/'));
        let available = std::fs::read_to_string(own_dir.join("cgroup.controllers"))
            .map_err(|e| format!("cannot read {}/cgroup.controllers: {e}", own_dir.display()))?;
        let has = |c: &str| available.split_whitespace().any(|x| x == c);
        if !has("memory") || !has("pids") {
            return Err(format!(
                "cgroup {} does not offer the memory and pids controllers to the agent (systemd: Delegate=yes on its unit)",
                own_dir.display()
            ));
        }
        let cpu = has("cpu");
        let enable = if cpu {
            "+memory +pids +cpu"
        } else {
            "+memory +pids"
        };
        let fail =
            |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
        // An inner cgroup with processes cannot delegate controllers: move
        // this process to a leaf first (a no-op when it already sits there).
        let supervisor = if own_dir.file_name().is_some_and(|n| n == "supervisor") {
            own_dir.clone()
        } else {
            let s = own_dir.join("supervisor");
            std::fs::create_dir_all(&s).map_err(|e| fail("create", &s, e))?;
            write_file(&s.join("cgroup.procs"), &pid.to_string())
                .map_err(|e| fail("move the agent into", &s, e))?;
            s
        };
        let base = supervisor.parent().unwrap_or(&own_dir).to_path_buf();
        write_file(&base.join("cgroup.subtree_control"), enable)
            .map_err(|e| fail("enable controllers in", &base, e))?;
        let deckies = base.join("deckies");
        std::fs::create_dir_all(&deckies).map_err(|e| fail("create", &deckies, e))?;
        write_file(&deckies.join("cgroup.subtree_control"), enable)
            .map_err(|e| fail("enable controllers in", &deckies, e))?;
        Ok(CgroupTree { deckies, cpu })
    }

    /// Where decky cgroups live.
    pub fn root(&self) -> &Path {
        &self.deckies
    }

    /// Create (or reuse) the cgroup of decky `name` with `limits`.
    pub fn create(&self, name: &str, limits: &ResourceLimits) -> std::io::Result<PathBuf> {
        let dir = self.deckies.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        write_file(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
        write_file(&dir.join("pids.max"), &limits.processes.to_string())?;
        if self.cpu {
            write_file(&dir.join("cpu.max"), &limits.cpu_max())?;
        }
        Ok(dir)
    }

    /// Kill every process in decky `name`'s cgroup (`cgroup.kill`, Linux 5.14+).
    pub fn kill(&self, name: &str) -> std::io::Result<()> {
        write_file(&self.deckies.join(name).join("cgroup.kill"), "1")
    }

    /// Remove decky `name`'s cgroup once it is empty.
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        std::fs::remove_dir(self.deckies.join(name))
    }
}

/// Move the calling process into the cgroup at `dir`.
pub fn join(dir: &Path) -> std::io::Result<()> {
    write_file(&dir.join("cgroup.procs"), "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory shaped like a delegated cgroupfs (its control files are
    /// plain files here, so the test reads back what was written).
    fn fake_mount(controllers: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "cpu memory pids io").unwrap();
        let own = d.path().join("system.slice/decnet-agent.service");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(own.join("cgroup.subtree_control"), "").unwrap();
        d
    }

    fn touch_controls(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for f in [
            "cgroup.procs",
            "cgroup.subtree_control",
            "memory.max",
            "pids.max",
            "cpu.max",
            "cgroup.kill",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
    }

    #[test]
    fn own_cgroup_reads_the_unified_line() {
        let text = "12:memory:/x\n0::/system.slice/decnet-agent.service\n";
        assert_eq!(own_cgroup(text), Some("/system.slice/decnet-agent.service"));
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn hybrid_or_undelegated_hosts_are_reported_not_used() {
        let d = tempfile::tempdir().unwrap();
        let e = CgroupTree::prepare(d.path(), "0::/\n", 1).unwrap_err();
        assert!(e.contains("cgroup v1 or a hybrid"), "{e}");
        let d = fake_mount("cpu io");
        let e = CgroupTree::prepare(d.path(), "0::/system.slice/decnet-agent.service\n", 1)
            .unwrap_err();
        assert!(e.contains("Delegate=yes"), "{e}");
    }

    #[test]
    fn prepare_moves_the_agent_to_a_leaf_and_limits_each_decky() {
        let d = fake_mount("cpu memory pids");
        let own = d.path().join("system.slice/decnet-agent.service");
        touch_controls(&own.join("supervisor"));
        touch_controls(&own.join("deckies"));
        let tree =
            CgroupTree::prepare(d.path(), "0::/system.slice/decnet-agent.service\n", 4242).unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(own.join("supervisor/cgroup.procs")), "4242");
        assert_eq!(
            read(own.join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(
            read(own.join("deckies/cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(tree.root(), own.join("deckies"));

        touch_controls(&own.join("deckies/web"));
        let limits = ResourceLimits {
            open_files: 64,
            processes: 32,
            memory_bytes: 64 << 20,
            cpu_percent: 25,
            file_bytes: 1 << 20,
        };
        let dir = tree.create("web", &limits).unwrap();
        assert_eq!(read(dir.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(dir.join("pids.max")), "32");
        assert_eq!(read(dir.join("cpu.max")), "25000 100000");
        tree.kill("web").unwrap();
        assert_eq!(read(dir.join("cgroup.kill")), "1");

        // An agent restarted inside its leaf keeps the same layout (the
        // leaf offers the controllers its parent enabled).
        std::fs::write(own.join("supervisor/cgroup.controllers"), "cpu memory pids").unwrap();
        let again = CgroupTree::prepare(
            d.path(),
            "0::/system.slice/decnet-agent.service/supervisor\n",
            4243,
        )
        .unwrap();
        assert_eq!(again.root(), own.join("deckies"));
        assert!(!own.join("supervisor/supervisor").exists());
        assert_eq!(read(own.join("supervisor/cgroup.procs")), "4242");
    }
}
