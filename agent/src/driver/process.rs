//! The `process` driver: each decky is a local process in its own process
//! group, supervised by a task that restarts it on exit (per its restart
//! policy, with exponential backoff, giving up after a crash loop), with
//! stdout/stderr appended to `<state-dir>/logs/<decky>.log`.
//!
//! Deckies outlive the agent process on purpose: an agent restart (upgrade,
//! crash) does not take the workloads down. The next agent re-adopts each
//! recorded process when its pid still names the same process (same kernel
//! start time) and otherwise starts it again.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use super::{Driver, DriverError, DriverEvent, DriverFuture, Observation, ProcessFacts, Started};
use crate::config::{DeckyConfig, DeploymentConfig, DriverKind, RestartPolicy};

/// After this many consecutive quick crashes a decky is given up on.
pub const MAX_CRASH_LOOP: u32 = 5;
/// A run longer than this resets the crash counter and the backoff.
const STABLE_RUN: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

struct Supervised {
    stop: oneshot::Sender<oneshot::Sender<()>>,
}

/// Supervised local processes.
pub struct ProcessDriver {
    log_dir: PathBuf,
    grace: Duration,
    events: mpsc::UnboundedSender<DriverEvent>,
    supervised: Mutex<HashMap<String, Supervised>>,
}

impl ProcessDriver {
    /// A driver writing logs under `log_dir`, giving processes `grace` between
    /// SIGTERM and SIGKILL, and reporting lifecycle changes on `events`.
    pub fn new(
        log_dir: PathBuf,
        grace: Duration,
        events: mpsc::UnboundedSender<DriverEvent>,
    ) -> Self {
        ProcessDriver {
            log_dir,
            grace,
            events,
            supervised: Mutex::new(HashMap::new()),
        }
    }

    fn spawn_child(&self, decky: &DeckyConfig) -> Result<(Child, ProcessFacts), DriverError> {
        decnet_pki::secure_fs::ensure_private_dir(&self.log_dir).map_err(|e| {
            DriverError(format!(
                "cannot create log dir {}: {e}",
                self.log_dir.display()
            ))
        })?;
        let log_path = self.log_dir.join(format!("{}.log", decky.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| DriverError(format!("cannot open {}: {e}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| DriverError(format!("cannot open {}: {e}", log_path.display())))?;
        let mut cmd = Command::new(&decky.command[0]);
        cmd.args(&decky.command[1..])
            .envs(decky.effective_env())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd
            .spawn()
            .map_err(|e| DriverError(format!("cannot start {}: {e}", decky.command[0])))?;
        let pid = child
            .id()
            .ok_or_else(|| DriverError("process exited before it could be observed".into()))?;
        let start_time = decnet_proc::start_time(pid).unwrap_or(0);
        Ok((child, ProcessFacts { pid, start_time }))
    }

    fn supervise(&self, decky: DeckyConfig, running: Running) {
        let (stop_tx, stop_rx) = oneshot::channel();
        let sup = Supervisor {
            decky: decky.clone(),
            running,
            grace: self.grace,
            events: self.events.clone(),
            log_dir: self.log_dir.clone(),
        };
        tokio::spawn(sup.run(stop_rx));
        let previous = self
            .supervised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(decky.name, Supervised { stop: stop_tx });
        drop(previous);
    }

    async fn stop_supervised(&self, name: &str) -> bool {
        let sup = self
            .supervised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        match sup {
            Some(sup) => {
                let (ack_tx, ack_rx) = oneshot::channel();
                if sup.stop.send(ack_tx).is_ok() {
                    let _ = ack_rx.await;
                }
                true
            }
            None => false,
        }
    }
}

enum Running {
    Child(Child, ProcessFacts),
    Adopted(ProcessFacts),
}

impl Running {
    fn facts(&self) -> ProcessFacts {
        match self {
            Running::Child(_, f) | Running::Adopted(f) => *f,
        }
    }

    /// Wait for the process to end; `Some(description)` when it failed.
    async fn wait(&mut self) -> Option<String> {
        match self {
            Running::Child(child, _) => match child.wait().await {
                Ok(status) if status.success() => None,
                Ok(status) => Some(describe_status(status)),
                Err(e) => Some(format!("cannot wait for the process: {e}")),
            },
            Running::Adopted(facts) => {
                while is_alive(*facts) {
                    tokio::time::sleep(POLL).await;
                }
                Some("exited (status unknown: started by a previous agent)".into())
            }
        }
    }

    /// SIGTERM the process group, wait up to `grace`, then SIGKILL it.
    async fn terminate(&mut self, grace: Duration) {
        let facts = self.facts();
        decnet_proc::signal_group(facts.pid, decnet_proc::Signal::TERM);
        let waited = tokio::time::timeout(grace, self.wait()).await;
        if waited.is_err() {
            decnet_proc::signal_group(facts.pid, decnet_proc::Signal::KILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), self.wait()).await;
        } else {
            // The leader is gone; make sure no stragglers of its group stay.
            decnet_proc::signal_group(facts.pid, decnet_proc::Signal::KILL);
        }
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "exited".into(),
    }
}

struct Supervisor {
    decky: DeckyConfig,
    running: Running,
    grace: Duration,
    events: mpsc::UnboundedSender<DriverEvent>,
    log_dir: PathBuf,
}

impl Supervisor {
    async fn run(mut self, mut stop: oneshot::Receiver<oneshot::Sender<()>>) {
        let mut backoff = FIRST_BACKOFF;
        let mut crashes = 0u32;
        let mut started = Instant::now();
        loop {
            let failure = tokio::select! {
                f = self.running.wait() => f,
                ack = &mut stop => {
                    self.running.terminate(self.grace).await;
                    if let Ok(ack) = ack { let _ = ack.send(()); }
                    return;
                }
            };
            if started.elapsed() >= STABLE_RUN {
                crashes = 0;
                backoff = FIRST_BACKOFF;
            }
            let restart = match self.decky.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => failure.is_some(),
                RestartPolicy::Never => false,
            };
            if !restart {
                let _ = self.events.send(DriverEvent::Exited {
                    name: self.decky.name.clone(),
                    error: failure,
                });
                return;
            }
            crashes += 1;
            if crashes > MAX_CRASH_LOOP {
                let _ = self.events.send(DriverEvent::Exited {
                    name: self.decky.name.clone(),
                    error: Some(format!(
                        "gave up after {MAX_CRASH_LOOP} quick restarts; last run {}",
                        failure.as_deref().unwrap_or("exited")
                    )),
                });
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                ack = &mut stop => {
                    if let Ok(ack) = ack { let _ = ack.send(()); }
                    return;
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let helper = ProcessDriver::new(self.log_dir.clone(), self.grace, self.events.clone());
            match helper.spawn_child(&self.decky) {
                Ok((child, facts)) => {
                    self.running = Running::Child(child, facts);
                    started = Instant::now();
                    let _ = self.events.send(DriverEvent::Started {
                        name: self.decky.name.clone(),
                        process: Some(facts),
                        restart: true,
                    });
                }
                Err(e) => {
                    let _ = self.events.send(DriverEvent::Exited {
                        name: self.decky.name.clone(),
                        error: Some(e.0),
                    });
                    return;
                }
            }
        }
    }
}

impl Driver for ProcessDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Process
    }

    fn start<'a>(
        &'a self,
        decky: &'a DeckyConfig,
    ) -> DriverFuture<'a, Result<Started, DriverError>> {
        Box::pin(async move {
            self.stop_supervised(&decky.name).await;
            let (mut child, facts) = self.spawn_child(decky)?;
            // A program that dies at once (bad arguments, missing library)
            // is a failed start, not a running decky.
            match tokio::time::timeout(Duration::from_millis(300), child.wait()).await {
                Ok(Ok(status)) if !status.success() => {
                    return Err(DriverError(format!(
                        "{} {} right after start (see logs/{}.log)",
                        decky.command[0],
                        describe_status(status),
                        decky.name
                    )));
                }
                Ok(Ok(_)) if decky.restart != RestartPolicy::Always => {
                    return Ok(Started {
                        process: Some(facts),
                        exited: true,
                    });
                }
                Ok(Err(e)) => return Err(DriverError(format!("cannot wait for the process: {e}"))),
                _ => {}
            }
            self.supervise(decky.clone(), Running::Child(child, facts));
            Ok(Started {
                process: Some(facts),
                exited: false,
            })
        })
    }

    fn adopt<'a>(
        &'a self,
        decky: &'a DeckyConfig,
        facts: Option<ProcessFacts>,
    ) -> DriverFuture<'a, bool> {
        Box::pin(async move {
            let Some(facts) = facts else { return false };
            if !is_alive(facts) {
                return false;
            }
            self.supervise(decky.clone(), Running::Adopted(facts));
            true
        })
    }

    fn stop<'a>(&'a self, name: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.stop_supervised(name).await;
            Ok(())
        })
    }

    fn observe<'a>(
        &'a self,
        names: &'a [String],
    ) -> DriverFuture<'a, BTreeMap<String, Observation>> {
        Box::pin(async move {
            let sup = self.supervised.lock().unwrap_or_else(|p| p.into_inner());
            names
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        Observation {
                            running: sup.contains_key(n),
                            detail: None,
                        },
                    )
                })
                .collect()
        })
    }

    fn render(&self, config: &DeploymentConfig) -> Result<serde_json::Value, DriverError> {
        let deckies: Vec<serde_json::Value> = config
            .deckies
            .iter()
            .map(|d| {
                serde_json::json!({
                    "name": d.name,
                    "argv": d.command,
                    "env": d.effective_env(),
                    "restart": d.restart,
                    "log": self.log_dir.join(format!("{}.log", d.name)),
                })
            })
            .collect();
        Ok(serde_json::json!({ "driver": "process", "deckies": deckies }))
    }
}

/// Whether `facts` still names the same live process.
pub fn is_alive(facts: ProcessFacts) -> bool {
    decnet_proc::is_same_process(facts.pid, facts.start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_parses_and_liveness_detects_pid_reuse() {
        let me = std::process::id();
        let t = decnet_proc::start_time(me).unwrap();
        assert!(is_alive(ProcessFacts {
            pid: me,
            start_time: t
        }));
        assert!(!is_alive(ProcessFacts {
            pid: me,
            start_time: t + 1
        }));
        assert!(!is_alive(ProcessFacts {
            pid: u32::MAX - 1,
            start_time: 1
        }));
    }
}
