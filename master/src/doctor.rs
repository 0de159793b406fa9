//! `decnet swarm doctor`: what needs an operator's attention, from the
//! fleet database (certificate expiry, silent hosts, clock skew reported by
//! heartbeats) and, unless `--no-probe`, from dialing every host (a
//! certificate other than the recorded one is a pin mismatch).
//!
//! The verdict is also the exit code, for scripts and cron: 0 nothing
//! found, 1 warnings only, 3 at least one error (2 stays the usage-error
//! code of every command).

use std::collections::BTreeMap;

use decnet_fleet::{CertRole, HostRecord, HostStatus};
use decnet_swarm_client::{ClientError, WorkerPool};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::table::{format_age, format_expiry};

pub use decnet_cli::doctor_cmd::DoctorPolicy;
pub use decnet_cli::render::print_report;

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Needs attention soon.
    Warning,
    /// Broken now, or about to be.
    Error,
}

/// One thing the doctor found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How serious.
    pub severity: Severity,
    /// The host it concerns (`None`: the master or the CA).
    pub host: Option<String>,
    /// Which check: `cert_expiry`, `silent`, `never_seen`, `clock_skew`,
    /// `pin_mismatch`, `wrong_identity`, `unreachable`, `disk_space`,
    /// `suspect`, `burned`, `ca_rotation`.
    pub check: &'static str,
    /// What, in words.
    pub detail: String,
}

/// Skew beyond which certificate validity checks start failing: an error.
pub const SKEW_ERROR_MS: i64 = 300_000;

/// What the database says, at `now`.
#[derive(Clone, Debug)]
pub struct FleetFacts {
    /// The time of the examination (unix seconds).
    pub now: i64,
    /// The CA certificate's expiry.
    pub ca_not_after: Option<i64>,
    /// The master certificate's expiry.
    pub master_not_after: Option<i64>,
    /// Every host.
    pub hosts: Vec<HostRecord>,
    /// Current certificate fingerprint → expiry.
    pub expiry: BTreeMap<String, i64>,
}

fn expiry_finding(
    host: Option<&str>,
    what: &str,
    not_after: i64,
    now: i64,
    warn_within: i64,
) -> Option<Finding> {
    let left = not_after - now;
    let severity = if left <= 0 {
        Severity::Error
    } else if left <= warn_within {
        Severity::Warning
    } else {
        return None;
    };
    Some(Finding {
        severity,
        host: host.map(str::to_string),
        check: "cert_expiry",
        detail: format!(
            "{what} certificate expires {}{}",
            format_expiry(not_after, now),
            if host.is_some() && left > 0 {
                " (workers renew at 2/3 of the lifetime: is the renewal failing?)"
            } else {
                ""
            }
        ),
    })
}

/// Examine the facts (pure: no IO). Findings are sorted, errors first.
pub fn examine(f: &FleetFacts, p: &DoctorPolicy) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(t) = f.ca_not_after {
        out.extend(expiry_finding(None, "the CA", t, f.now, p.expiry_warning));
    }
    if let Some(t) = f.master_not_after {
        out.extend(expiry_finding(
            None,
            "the master's",
            t,
            f.now,
            p.expiry_warning,
        ));
    }
    for h in f
        .hosts
        .iter()
        .filter(|h| h.status != HostStatus::Decommissioned)
    {
        let name = Some(h.name.as_str());
        match h.status {
            HostStatus::Suspect => {
                out.push(Finding {
                    severity: Severity::Error,
                    host: Some(h.name.clone()),
                    check: "suspect",
                    detail: format!(
                        "two holders of its identity were seen ({}); renewals are frozen: burn it (decnet swarm burn {})",
                        h.last_error.as_deref().unwrap_or("see the audit log"),
                        h.name
                    ),
                });
            }
            HostStatus::Burned => {
                out.push(Finding {
                    severity: Severity::Warning,
                    host: Some(h.name.clone()),
                    check: "burned",
                    detail: "burned: every certificate revoked; rebuild it and let it join again with a fresh token".into(),
                });
                // Nothing else about a burned host matters until it joins.
                continue;
            }
            _ => {}
        }
        for (role, fp) in [
            ("agent", &h.agent_fingerprint),
            ("updater", &h.updater_fingerprint),
        ] {
            if let Some(t) = fp.as_ref().and_then(|fp| f.expiry.get(fp)) {
                out.extend(expiry_finding(name, role, *t, f.now, p.expiry_warning));
            }
        }
        match (h.last_seen, h.last_heartbeat) {
            (None, _) => out.push(Finding {
                severity: Severity::Warning,
                host: Some(h.name.clone()),
                check: "never_seen",
                detail: format!(
                    "enrolled {} and never heard from (agent not started, or not sending heartbeats with --master?)",
                    format_age(f.now - h.enrolled_at)
                ),
            }),
            // Reached by `swarm check`, but it sends no heartbeats: its
            // silence could not be noticed (not silent, not down).
            (Some(seen), None) if h.status != HostStatus::Unreachable => out.push(Finding {
                severity: Severity::Warning,
                host: Some(h.name.clone()),
                check: "no_heartbeats",
                detail: format!(
                    "reached {} but sends no heartbeats (its agent runs without --master): if it goes down, nothing notices until the next swarm check",
                    format_age(f.now - seen)
                ),
            }),
            (Some(seen), beat)
                if h.status == HostStatus::Unreachable
                    || beat.is_some_and(|b| f.now - b > p.silent_after) =>
            {
                out.push(Finding {
                    severity: Severity::Error,
                    host: Some(h.name.clone()),
                    check: "silent",
                    detail: format!(
                        "last heard from {}{}",
                        format_age(f.now - seen),
                        h.last_error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ),
                })
            }
            (Some(_), _) => {}
        }
        if let Some(ms) = h.clock_skew_ms
            && ms.saturating_abs() > p.max_skew_ms
        {
            out.push(Finding {
                severity: if ms.saturating_abs() > SKEW_ERROR_MS {
                    Severity::Error
                } else {
                    Severity::Warning
                },
                host: Some(h.name.clone()),
                check: "clock_skew",
                detail: format!(
                    "clock is {:.1}s {} the master's (is NTP running there?)",
                    ms.saturating_abs() as f64 / 1000.0,
                    if ms > 0 { "ahead of" } else { "behind" }
                ),
            });
        }
    }
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.host.cmp(&b.host))
            .then_with(|| a.check.cmp(b.check))
    });
    out
}

/// The finding a failed probe of `host`'s `role` daemon makes.
pub fn probe_finding(host: &str, role: &str, e: &ClientError) -> Finding {
    let (severity, check) = match e {
        ClientError::PinMismatch { .. } => (Severity::Error, "pin_mismatch"),
        ClientError::WrongServer { .. } => (Severity::Error, "wrong_identity"),
        _ => (Severity::Warning, "unreachable"),
    };
    Finding {
        severity,
        host: Some(host.to_string()),
        check,
        detail: format!("{role}: {e}"),
    }
}

/// Dial every live host's agent (and updater, when it has one) and report
/// those that do not present their recorded certificate, or do not answer.
pub async fn probe(pool: &WorkerPool, hosts: &[HostRecord], parallel: usize) -> Vec<Finding> {
    let limit = crate::fleet_ops::FanOut::looks(parallel);
    let mut set = JoinSet::new();
    for h in hosts
        .iter()
        .filter(|h| !matches!(h.status, HostStatus::Decommissioned | HostStatus::Burned))
        .cloned()
    {
        let pool = pool.clone();
        let limit = limit.clone();
        set.spawn(async move {
            let _turn = limit.turn().await;
            let mut found = Vec::new();
            match crate::fleet_ops::agent_client(&pool, &h) {
                Ok(c) => {
                    if let Err(e) = c.health().await {
                        found.push(probe_finding(&h.name, "agent", &e));
                    }
                }
                Err(e) => found.push(probe_finding(&h.name, "agent", &e)),
            }
            if !h.pins(CertRole::Updater).is_empty() {
                match crate::rollout::updater_client(&pool, &h) {
                    Ok(c) => {
                        if let Err(e) = c.health().await {
                            found.push(probe_finding(&h.name, "updater", &e));
                        }
                    }
                    Err(e) => found.push(probe_finding(&h.name, "updater", &e)),
                }
            }
            found
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(f) = r {
            out.extend(f);
        }
    }
    out
}

/// The free space of the filesystems holding the fleet's logs and its
/// database, against the listener's default watermark: below it the
/// listener has stopped writing (an error), below twice it soon will (a
/// warning). Directories that do not exist are skipped.
pub fn disk_findings(dirs: &[(&str, &std::path::Path)]) -> Vec<Finding> {
    use std::os::unix::fs::MetadataExt;
    let policy = decnet_log_relay::disk::DiskPolicy::default();
    let mut out = Vec::new();
    // One finding per filesystem, naming everything on it.
    let mut filesystems: Vec<(u64, String, &std::path::Path)> = Vec::new();
    for (what, dir) in dirs {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        match filesystems
            .iter_mut()
            .find(|(dev, _, _)| *dev == meta.dev())
        {
            Some((_, names, _)) => *names = format!("{names} and {what}"),
            None => filesystems.push((meta.dev(), what.to_string(), dir)),
        }
    }
    for (_, what, dir) in filesystems {
        let Ok((free, total)) = decnet_log_relay::disk::free_space(dir) else {
            continue;
        };
        let mark = decnet_log_relay::disk::watermark(&policy, total);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let (severity, verdict) = if free < mark {
            (
                Severity::Error,
                "below the watermark: the log listener has stopped writing",
            )
        } else if free < mark.saturating_mul(2) {
            (
                Severity::Warning,
                "near the watermark below which the log listener stops writing",
            )
        } else {
            continue;
        };
        out.push(Finding {
            severity,
            host: None,
            check: "disk_space",
            detail: format!(
                "{what} filesystem ({}): {:.1} MiB free, {verdict} ({:.1} MiB); free space or move the logs (--log-path)",
                dir.display(),
                mib(free),
                mib(mark)
            ),
        });
    }
    out
}

/// The listener's own word that it stopped writing (its marker beside the
/// logs, see `decnet_log_relay::disk::PAUSED_MARKER`).
pub fn paused_finding(log_dir: &std::path::Path) -> Option<Finding> {
    let body = std::fs::read_to_string(log_dir.join(decnet_log_relay::disk::PAUSED_MARKER)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mib = |k: &str| v[k].as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    Some(Finding {
        severity: Severity::Error,
        host: None,
        check: "disk_space",
        detail: format!(
            "the log listener stopped writing {}: {:.1} MiB free, below its watermark of {:.1} MiB; lines are dropped (counted) until space is freed in {}",
            v["since"]
                .as_i64()
                .map(|t| format!("{} ago", format_age(decnet_fleet::unix_now() - t)))
                .unwrap_or_else(|| "some time ago".into()),
            mib("free_bytes"),
            mib("watermark_bytes"),
            log_dir.display()
        ),
    })
}

/// Run the doctor for `home`: gather the facts, probe `parallel` hosts at
/// a time (`None`: no probing), print, and return the verdict's exit code.
pub async fn run(
    home: &crate::home::MasterHome,
    policy: &DoctorPolicy,
    parallel: Option<usize>,
    json: bool,
) -> anyhow::Result<i32> {
    let layout = home.ca_layout();
    let master = crate::fleet_ops::master_bundle(&layout)?;
    let pool = WorkerPool::new(&master)
        .map_err(|e| anyhow::anyhow!("building the master's TLS client: {e}"))?;
    let db = crate::usage::open_db(home).await?;
    let r = report(home, &db, &pool, policy, parallel, None).await;
    db.close().await;
    print_report(&r?, json)
}

/// A CA rotation under way: one warning for the fleet, and one per host
/// that still holds a certificate of the CA being dropped (it renews at its
/// next heartbeat; one that does not blocks `ca rotation finish`).
pub fn rotation_findings(
    rot: &decnet_fleet::ca_rotation::RotationRecord,
    hosts: &[decnet_fleet::ca_rotation::HostCa],
) -> Vec<Finding> {
    let leaving = rot.leaving_ca();
    let behind: Vec<&decnet_fleet::ca_rotation::HostCa> = hosts
        .iter()
        .filter(|h| h.status != "burned" && h.depends_on(leaving))
        .collect();
    let mut out = vec![Finding {
        severity: Severity::Warning,
        host: None,
        check: "ca_rotation",
        detail: format!(
            "a CA rotation is under way ({}); {} host(s) still hold certificates of the CA being dropped (decnet ca rotation status)",
            rot.direction.as_str(),
            behind.len()
        ),
    }];
    for h in behind {
        let which: Vec<&str> = [
            (h.agent_ca.as_deref() == Some(leaving)).then_some("agent"),
            (h.has_updater && h.updater_ca.as_deref() == Some(leaving)).then_some("updater"),
        ]
        .into_iter()
        .flatten()
        .collect();
        out.push(Finding {
            severity: Severity::Warning,
            host: Some(h.host.clone()),
            check: "ca_rotation",
            detail: format!(
                "its {} certificate is of the CA being dropped; it renews at its next heartbeat (or blocks `ca rotation finish`)",
                which.join(" and ")
            ),
        });
    }
    out
}

/// What the doctor found, as `swarm doctor --json` prints it (and the fleet
/// API's `/v1/doctor` answers): `verdict`, `hosts_examined`, `probed`,
/// `findings`. `scope`: only these hosts' findings (an operator's host
/// scope; the master's own findings are then left out).
pub async fn report(
    home: &crate::home::MasterHome,
    db: &decnet_fleet::FleetDb,
    pool: &WorkerPool,
    policy: &DoctorPolicy,
    parallel: Option<usize>,
    scope: Option<&(dyn Fn(&str) -> bool + Sync)>,
) -> anyhow::Result<serde_json::Value> {
    let layout = home.ca_layout();
    let ca = crate::usage::load_ca(&layout)?;
    let master = crate::fleet_ops::master_bundle(&layout)?;
    let mut hosts = db.hosts().await?;
    if let Some(sees) = scope {
        hosts.retain(|h| sees(&h.name));
    }
    let expiry = db.current_certificate_expiry().await?;
    let facts = FleetFacts {
        now: decnet_fleet::unix_now(),
        ca_not_after: crate::cli::cert_not_after(ca.cert_pem()).ok(),
        master_not_after: Some(master.identity.not_after.unix_timestamp()),
        hosts,
        expiry,
    };
    let mut findings = examine(&facts, policy);
    if let Some(rot) = db.rotation().await? {
        findings.extend(rotation_findings(&rot, &db.host_cas().await?));
    }
    let logs = home.home.join("logs");
    findings.extend(paused_finding(&logs));
    findings.extend(disk_findings(&[
        ("log", logs.as_path()),
        ("database", home.home.as_path()),
    ]));
    if let Some(parallel) = parallel {
        findings.extend(probe(pool, &facts.hosts, parallel).await);
    }
    if scope.is_some() {
        findings.retain(|f| f.host.is_some());
    }
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.host.cmp(&b.host))
            .then_with(|| a.check.cmp(b.check))
    });
    let code = verdict_code(&findings);
    let live = facts
        .hosts
        .iter()
        .filter(|h| h.status != HostStatus::Decommissioned)
        .count();
    Ok(serde_json::json!({
        "verdict": match code { 0 => "ok", 1 => "warning", _ => "error" },
        "hosts_examined": live,
        "probed": parallel.is_some(),
        "findings": findings,
    }))
}

/// The exit code of a list of findings: 0, 1 (warnings), 3 (errors).
pub fn verdict_code(findings: &[Finding]) -> i32 {
    match findings.iter().map(|f| f.severity).max() {
        None => 0,
        Some(Severity::Warning) => 1,
        Some(Severity::Error) => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86400;

    fn policy() -> DoctorPolicy {
        DoctorPolicy {
            expiry_warning: 30 * DAY,
            silent_after: 90,
            max_skew_ms: 5000,
        }
    }

    fn host(name: &str, fp: &str, last_seen: Option<i64>) -> HostRecord {
        let mut h = HostRecord::new(name, "10.0.0.1", 8765, 8766);
        h.agent_fingerprint = Some(fp.into());
        h.status = HostStatus::Active;
        h.last_seen = last_seen;
        // A host heard from sends heartbeats, unless a test says otherwise.
        h.last_heartbeat = last_seen;
        h
    }

    #[test]
    fn a_host_without_heartbeats_is_said_to_be_so_not_silent() {
        let now = 1_000_000_000;
        let mut quiet = host("quiet", "aa", Some(now - 600));
        quiet.last_heartbeat = None;
        let f = FleetFacts {
            now,
            ca_not_after: Some(now + 3650 * DAY),
            master_not_after: Some(now + 800 * DAY),
            hosts: vec![quiet.clone()],
            expiry: BTreeMap::new(),
        };
        let found = examine(&f, &policy());
        let checks: Vec<&str> = found.iter().map(|x| x.check).collect();
        assert!(checks.contains(&"no_heartbeats"), "{checks:?}");
        assert!(!checks.contains(&"silent"), "{checks:?}");
        // Unreachable when a check failed: that is down, whatever sends what.
        quiet.status = HostStatus::Unreachable;
        let f = FleetFacts {
            hosts: vec![quiet],
            ..f
        };
        let checks: Vec<&str> = examine(&f, &policy())
            .into_iter()
            .map(|x| x.check)
            .collect();
        assert!(checks.contains(&"silent"), "{checks:?}");
    }

    #[test]
    fn a_healthy_fleet_has_no_findings() {
        let now = 1_000_000_000;
        let f = FleetFacts {
            now,
            ca_not_after: Some(now + 3650 * DAY),
            master_not_after: Some(now + 800 * DAY),
            hosts: vec![host("w1", "aa", Some(now - 10))],
            expiry: [("aa".to_string(), now + 800 * DAY)].into_iter().collect(),
        };
        let found = examine(&f, &policy());
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(verdict_code(&found), 0);
    }

    #[test]
    fn each_problem_is_found_with_its_severity() {
        let now = 1_000_000_000;
        let mut skewed = host("skewed", "cc", Some(now - 5));
        skewed.clock_skew_ms = Some(-12_000);
        let mut far = host("far", "dd", Some(now - 5));
        far.clock_skew_ms = Some(600_000);
        let mut never = host("never", "ee", None);
        never.status = HostStatus::Enrolled;
        let mut gone = host("gone", "ff", Some(now - 5000));
        gone.status = HostStatus::Decommissioned;
        let f = FleetFacts {
            now,
            ca_not_after: Some(now + 3650 * DAY),
            master_not_after: Some(now + 10 * DAY),
            hosts: vec![
                host("expiring", "aa", Some(now - 1)),
                host("silent", "bb", Some(now - 600)),
                skewed,
                far,
                never,
                gone,
            ],
            expiry: [
                ("aa".to_string(), now + 5 * DAY),
                ("bb".to_string(), now - DAY),
                ("cc".to_string(), now + 800 * DAY),
                ("dd".to_string(), now + 800 * DAY),
                ("ee".to_string(), now + 800 * DAY),
                ("ff".to_string(), now - DAY),
            ]
            .into_iter()
            .collect(),
        };
        let found = examine(&f, &policy());
        let has = |host: Option<&str>, check: &str, sev: Severity| {
            found
                .iter()
                .any(|x| x.host.as_deref() == host && x.check == check && x.severity == sev)
        };
        assert!(has(None, "cert_expiry", Severity::Warning), "{found:#?}");
        assert!(has(Some("expiring"), "cert_expiry", Severity::Warning));
        assert!(has(Some("silent"), "cert_expiry", Severity::Error));
        assert!(has(Some("silent"), "silent", Severity::Error));
        assert!(has(Some("skewed"), "clock_skew", Severity::Warning));
        assert!(has(Some("far"), "clock_skew", Severity::Error));
        assert!(has(Some("never"), "never_seen", Severity::Warning));
        assert!(
            !found.iter().any(|x| x.host.as_deref() == Some("gone")),
            "decommissioned hosts are not examined: {found:#?}"
        );
        assert_eq!(found[0].severity, Severity::Error, "errors first");
        assert_eq!(verdict_code(&found), 3);
        let warnings: Vec<Finding> = found
            .into_iter()
            .filter(|x| x.severity == Severity::Warning)
            .collect();
        assert_eq!(verdict_code(&warnings), 1);
    }

    #[test]
    fn a_rotation_names_the_hosts_still_on_the_ca_being_dropped() {
        use decnet_fleet::ca_rotation::{HostCa, RotationDirection, RotationRecord};
        let rot = RotationRecord {
            old_ca: "old".into(),
            new_ca: "new".into(),
            direction: RotationDirection::Forward,
            started_at: 0,
            actor: "local:root".into(),
        };
        let h = |name: &str, agent: &str, updater: Option<&str>, status: &str| HostCa {
            host: name.into(),
            status: status.into(),
            last_seen: None,
            agent_ca: Some(agent.into()),
            updater_ca: updater.map(str::to_string),
            has_updater: updater.is_some(),
            trust: None,
        };
        let f = rotation_findings(
            &rot,
            &[
                h("moved", "new", Some("new"), "active"),
                h("half", "new", Some("old"), "active"),
                h("down", "old", None, "unreachable"),
                h("gone", "old", None, "burned"),
            ],
        );
        let hosts: Vec<Option<&str>> = f.iter().map(|f| f.host.as_deref()).collect();
        assert_eq!(hosts, vec![None, Some("half"), Some("down")]);
        assert!(
            f[1].detail.starts_with("its updater certificate"),
            "{}",
            f[1].detail
        );
        assert!(f[0].detail.contains("2 host(s)"), "{}", f[0].detail);
        // Going back, the new CA is the one being dropped.
        let back = RotationRecord {
            direction: RotationDirection::Back,
            ..rot
        };
        let f = rotation_findings(&back, &[h("moved", "new", Some("new"), "active")]);
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn probe_failures_are_classified() {
        let pin = probe_finding(
            "w1",
            "agent",
            &ClientError::PinMismatch {
                endpoint: "agent w1".into(),
            },
        );
        assert_eq!((pin.check, pin.severity), ("pin_mismatch", Severity::Error));
        let down = probe_finding(
            "w1",
            "updater",
            &ClientError::Unreachable {
                endpoint: "updater w1".into(),
                detail: "connection refused".into(),
            },
        );
        assert_eq!(
            (down.check, down.severity),
            ("unreachable", Severity::Warning)
        );
        assert!(down.detail.starts_with("updater: "));
    }
}
