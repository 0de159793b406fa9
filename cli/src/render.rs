//! What fleet commands print, on the master host or through a context (the
//! same either way), and at the end of a followed job: hosts, status and
//! checks, the doctor's report, the audit log, join tokens, renewals,
//! burns, a deploy's summary, a teardown, a rollout's table, a rollback,
//! and the evidence of a refused release. Every string a worker sent goes
//! through [`inert`].

use decnet_api::{
    DeckyState, HostDeploy, HostReport, ProbeFailure, UpdateOutcome, UpdateResult as HostResult,
};

use crate::exit::partial;
use crate::table::{fleet_table, format_time, inert, unix_now};

/// `swarm deploy`'s summary (local, or at the end of a followed job);
/// whether every host succeeded.
pub fn print_deploy_results(
    results: &[HostDeploy],
    wait: bool,
    json: bool,
) -> anyhow::Result<bool> {
    let ok = results.iter().all(|r| {
        if wait {
            r.succeeded()
        } else {
            r.error.is_none()
        }
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in results {
            match &r.error {
                Some(e) => println!("{:<16} FAILED: {}", r.host, inert(e)),
                None if wait => {
                    let running = r.deckies.iter().filter(|d| d.state == "running").count();
                    println!(
                        "{:<16} done: {running}/{} deckies running",
                        r.host,
                        r.deckies.len()
                    );
                }
                None => {}
            }
        }
    }
    Ok(ok)
}

/// What `swarm teardown` prints.
pub fn print_torn_down(host: &str, names: &[String]) {
    println!(
        "{host}: torn down {}",
        if names.is_empty() {
            "nothing".into()
        } else {
            inert(&names.join(", ")).into_owned()
        }
    );
}

/// The evidence for a terminal: each worker string made inert.
pub fn render_failure(f: &ProbeFailure, host: &str) -> String {
    let mut out = String::new();
    let mut section = |title: &str, lines: &mut dyn Iterator<Item = &str>| {
        let mut lines = lines.peekable();
        if lines.peek().is_none() {
            return;
        }
        out.push_str(&format!("{host}: {title}\n"));
        for l in lines {
            out.push_str(&format!("  {}\n", inert(l)));
        }
    };
    section(
        "the probe of the new release",
        &mut f.probe.iter().map(String::as_str),
    );
    section(
        "the probe of the restored release",
        &mut f.restore_probe.iter().map(String::as_str),
    );
    section(
        "the failed agent's last output",
        &mut f.agent_output.lines(),
    );
    out
}

/// What `swarm update` prints after its progress; its exit status.
pub fn print_rollout(results: &[HostResult], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!();
        print!(
            "{}",
            crate::table::render(
                &["HOST", "OUTCOME", "RELEASE", "DETAIL"],
                results.iter().map(|r| {
                    vec![
                        r.host.clone(),
                        r.outcome.to_string(),
                        r.release.clone().unwrap_or_else(|| "-".into()),
                        r.detail.clone(),
                    ]
                })
            )
        );
        // Why each refused release was refused, as its updater saw it.
        for r in results {
            if let Some(f) = &r.failure {
                print!("\n{}", render_failure(f, &r.host));
            }
        }
    }
    partial(
        results.iter().all(|r| r.outcome == UpdateOutcome::Updated),
        "the rollout did not update every host",
    )
}

/// What `swarm rollback` prints; its exit status.
pub fn print_rollback(r: &HostResult) -> anyhow::Result<()> {
    println!("{}: {} — {}", r.host, r.outcome, inert(&r.detail));
    if let Some(f) = &r.failure {
        print!("{}", render_failure(f, &r.host));
    }
    partial(r.outcome == UpdateOutcome::RolledBack, "rollback failed")
}

/// What a fetched evidence archive prints.
pub fn print_evidence_fetched(
    host: &str,
    decky: &str,
    id: &str,
    bytes: u64,
    out: &std::path::Path,
) {
    println!("{host}: {decky} {id}: {bytes} bytes in {}", out.display());
}

/// What `ca show` prints.
pub fn print_ca(info: &decnet_api::CaInfo, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(info)?);
        return Ok(());
    }
    println!("CA directory:       {}", info.ca_dir);
    println!(
        "CA subject:         {}",
        crate::table::inert(&info.ca_subject)
    );
    println!("CA fingerprint:     {}", info.ca_fingerprint);
    println!("CA expires:         {}", format_time(info.ca_not_after));
    match (&info.master_fingerprint, info.master_not_after) {
        (Some(f), Some(t)) => {
            println!("master fingerprint: {f}");
            println!("master expires:     {}", format_time(t));
        }
        _ => println!("master bundle:      missing (re-run `decnet ca init --force`)"),
    }
    Ok(())
}

/// `swarm list`'s output, local or through a context.
pub fn print_host_list(hosts: &[decnet_api::Host], json: bool) -> anyhow::Result<()> {
    if json {
        let out: Vec<serde_json::Value> = hosts
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if hosts.is_empty() {
        println!("no hosts enrolled (decnet swarm enroll --host NAME --address ADDR)");
        return Ok(());
    }
    print!("{}", fleet_table(hosts, unix_now()));
    Ok(())
}

/// `swarm show`'s output, local or through a context.
pub fn print_host(h: &decnet_api::Host, json: bool) -> anyhow::Result<()> {
    let now = unix_now();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::to_value(h)?)?
        );
        return Ok(());
    }
    println!("host:                {}", h.name);
    println!("address:             {}", h.address);
    println!("agent port:          {}", h.agent_port);
    println!("updater port:        {}", h.updater_port);
    println!("status:              {}", h.status);
    println!("SANs:                {}", h.sans.join(", "));
    println!(
        "agent fingerprint:   {}",
        h.agent_fingerprint.as_deref().unwrap_or("-")
    );
    println!(
        "updater fingerprint: {}",
        h.updater_fingerprint.as_deref().unwrap_or("-")
    );
    let expires = |t: Option<i64>| {
        t.map(|t| {
            format!(
                "{} ({})",
                format_time(t),
                crate::table::format_expiry(t, now)
            )
        })
        .unwrap_or_else(|| "-".into())
    };
    println!("agent cert expiry:   {}", expires(h.agent_cert_not_after));
    println!("updater cert expiry: {}", expires(h.updater_cert_not_after));
    println!("enrolled:            {}", format_time(h.enrolled_at));
    println!(
        "last seen:           {}",
        h.last_seen
            .map(format_time)
            .unwrap_or_else(|| "never".into())
    );
    println!(
        "last heartbeat:      {}",
        h.last_heartbeat.map(format_time).unwrap_or_else(|| {
            "never (its agent sends none: started without --master?)".into()
        })
    );
    if let Some(e) = &h.last_error {
        println!("last error:          {}", crate::table::inert(e));
    }
    if let Some(v) = &h.agent_version {
        println!("agent version:       {}", crate::table::inert(v));
    }
    if let Some(ms) = h.clock_skew_ms {
        println!(
            "clock skew:          {:+.1}s (host minus master)",
            ms as f64 / 1000.0
        );
    }
    println!(
        "revoked certs:       {}",
        h.revoked_fingerprints.as_ref().map_or(0, Vec::len)
    );
    Ok(())
}

/// `swarm releases`'s output, local or through a context.
pub fn print_releases(v: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    let ok = v["error"].is_null();
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return partial(ok, "the updater did not answer");
    }
    let text = |x: &serde_json::Value| x.as_str().unwrap_or("").to_string();
    let time = |x: &serde_json::Value| format_time(x.as_i64().unwrap_or(0));
    match v["releases"].as_array() {
        Some(rs) if ok => print!(
            "{}",
            crate::table::render(
                &["", "SLOT", "RELEASE", "SHA256", "INSTALLED"],
                rs.iter().enumerate().map(|(i, r)| {
                    vec![
                        if i == 0 { "active" } else { "previous" }.to_string(),
                        text(&r["slot"]),
                        text(&r["sha"]),
                        text(&r["sha256"]).chars().take(16).collect::<String>(),
                        time(&r["installed_at"]),
                    ]
                })
            )
        ),
        _ => println!(
            "releases unavailable: {}",
            crate::table::inert(&text(&v["error"]))
        ),
    }
    let history = v["history"].as_array().cloned().unwrap_or_default();
    if !history.is_empty() {
        println!("\nhistory:");
        print!(
            "{}",
            crate::table::render(
                &["AT", "KIND", "RELEASE", "OUTCOME", "DETAIL"],
                history.iter().map(|u| {
                    vec![
                        time(&u["at"]),
                        text(&u["kind"]),
                        text(&u["release"]),
                        text(&u["outcome"]),
                        text(&u["detail"]),
                    ]
                })
            )
        );
    }
    partial(ok, "the updater did not answer")
}

/// `swarm decommission`'s report, local or through a context.
pub fn print_decommissioned(host: &str, revoked: usize, removed: usize) {
    println!(
        "decommissioned {host}: {revoked} certificate(s) revoked, {removed} bundle dir(s) removed"
    );
}

/// `swarm token create`'s output: the token alone on stdout, how to use it
/// on stderr.
pub fn print_join_token(token: &str, host: &str, updater: bool, ttl_secs: u64) {
    println!("{token}");
    eprintln!(
        "On {host}: save the token to a file only root can read (chmod 600 FILE), then: decnet-agent join --master MASTER:8770 --token-file FILE{}; valid {ttl_secs}s, single use (a token in argv is visible to every process in /proc).",
        if updater {
            " (and decnet-updater join --master MASTER:8770 --token-file FILE right after: the second half ends 10 minutes after the first is used)"
        } else {
            ""
        },
    );
}

/// `swarm renew`'s report, local or through a context.
pub fn print_renewal(host: &str, has_updater: bool, updater_error: Option<&str>) {
    println!(
        "{host}: the agent will renew its certificate at its next heartbeat (decnet master serve must be running)"
    );
    match (has_updater, updater_error) {
        (false, _) => {}
        (true, None) => println!("{host}: the updater is renewing its certificate now"),
        // The agent's request stands (it is in the database); the updater
        // renews when due, or when asked again.
        (true, Some(e)) => eprintln!(
            "warning: {host}: the updater did not take the renewal request: {}; it renews when due (at 2/3 of its lifetime), or run `decnet swarm renew {host}` again once it answers",
            crate::table::inert(e)
        ),
    }
}

/// What `swarm burn` prints.
pub fn print_burned(b: &decnet_api::Burned) {
    let host = &b.host;
    match (&b.torn_down, &b.teardown_error) {
        (Some(names), _) => println!(
            "{host}: {} decky(ies) torn down before the burn",
            names.len()
        ),
        (None, e) => eprintln!(
            "warning: {host}'s deckies could not be torn down ({}); they may still run until the host is rebuilt",
            crate::table::inert(e.as_deref().unwrap_or("unknown"))
        ),
    }
    println!(
        "burned {host}: {} certificate(s) revoked. The master refuses them within a second (open connections included); every worker once it fetches the new revocation list.",
        b.revoked
    );
    println!("To re-admit {host}, rebuild it (its keys and binaries are not to be trusted), then:");
    println!("  decnet swarm token create --host {host} --updater     # on the master");
    println!(
        "  decnet-agent join --master MASTER:8770 --token-file FILE   # on {host}; also decnet-updater join"
    );
}

/// `audit`'s output, local or through a context.
pub fn print_audit(entries: &[decnet_api::AuditRecord], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    print!(
        "{}",
        crate::table::render(
            &[
                "AT", "ACTOR", "FROM", "ACTION", "TARGET", "OUTCOME", "DETAIL"
            ],
            entries.iter().map(|e| {
                vec![
                    format_time(e.at),
                    e.actor.clone(),
                    e.source.clone().unwrap_or_else(|| "-".into()),
                    e.action.clone(),
                    e.target.clone(),
                    e.outcome.clone(),
                    e.detail.clone(),
                ]
            })
        )
    );
    Ok(())
}

/// Print a dry run's plans (JSON, each plan indented); whether every
/// agent answered with one.
pub fn print_deploy_plan(plans: &[decnet_api::HostPlan]) -> anyhow::Result<bool> {
    let shown: Vec<serde_json::Value> = plans
        .iter()
        .map(|p| {
            let mut v = serde_json::json!({ "host": p.host });
            if let Some(plan) = &p.plan {
                v["plan"] = plan.to_value();
            }
            if let Some(e) = &p.error {
                v["error"] = e.as_str().into();
            }
            v
        })
        .collect();
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(plans.iter().all(|p| p.error.is_none()))
}

/// What `swarm evidence HOST` prints.
pub fn print_evidence_list(
    host: &str,
    list: &decnet_api::EvidenceList,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&list.archives)?);
        return Ok(());
    }
    if !list.kept {
        println!("{host}: keeps no evidence (compose driver, or --evidence-keep 0)");
    }
    if list.archives.is_empty() {
        println!("{host}: no evidence archive");
        return Ok(());
    }
    println!("{:<24} {:<22} {:>12}", "DECKY", "ID", "BYTES");
    for a in &list.archives {
        println!(
            "{:<24} {:<22} {:>12}",
            inert(&a.decky),
            inert(&a.id),
            a.bytes
        );
    }
    Ok(())
}

/// `swarm status`'s output (local or through a context); whether every
/// host answered.
pub fn print_status(reports: &[HostReport], json: bool) -> anyhow::Result<bool> {
    let all_ok = reports.iter().all(|r| r.reachable);
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(all_ok);
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    for r in reports {
        match (&r.status, &r.error) {
            (Some(s), _) if s.deckies.is_empty() => rows.push(vec![
                r.host.clone(),
                "-".into(),
                "(none)".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                String::new(),
            ]),
            (Some(s), _) => {
                for d in &s.deckies {
                    rows.push(vec![
                        r.host.clone(),
                        d.name.clone(),
                        d.state.clone(),
                        d.address.clone().unwrap_or_else(|| "-".into()),
                        d.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        d.uid.map(|u| u.to_string()).unwrap_or_else(|| "-".into()),
                        d.restarts.to_string(),
                        decky_detail(d),
                    ]);
                }
            }
            (None, e) => rows.push(vec![
                r.host.clone(),
                "-".into(),
                "unreachable".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                e.clone().unwrap_or_default(),
            ]),
        }
    }
    print!(
        "{}",
        crate::table::render(
            &[
                "HOST", "DECKY", "STATE", "ADDRESS", "PID", "UID", "RESTARTS", "DETAIL"
            ],
            rows
        )
    );
    Ok(all_ok)
}

/// The DETAIL of a decky's row: its error, and the attempts to reach out
/// it made (a honeypot trying to connect out is an event to see).
fn decky_detail(d: &DeckyState) -> String {
    let forbidden = d
        .observed
        .as_ref()
        .and_then(|o| o.to_value()["detail"]["network"]["forbidden"].as_u64())
        .unwrap_or(0);
    match (d.error.as_deref(), forbidden) {
        (None, 0) => String::new(),
        (Some(e), 0) => e.to_string(),
        (None, n) => format!("{n} forbidden connection attempt(s)"),
        (Some(e), n) => format!("{e}; {n} forbidden connection attempt(s)"),
    }
}

/// `swarm check`'s output (local or through a context); whether every host
/// answered.
pub fn print_check(reports: &[HostReport], json: bool) -> anyhow::Result<bool> {
    let all_ok = reports.iter().all(|r| r.reachable);
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(all_ok);
    }
    print!(
        "{}",
        crate::table::render(
            &["HOST", "AGENT", "VERSION", "DETAIL"],
            reports.iter().map(|r| {
                vec![
                    r.host.clone(),
                    if r.reachable { "ok" } else { "unreachable" }.to_string(),
                    r.version.clone().unwrap_or_else(|| "-".into()),
                    r.error.clone().unwrap_or_default(),
                ]
            })
        )
    );
    Ok(all_ok)
}

/// `swarm doctor`'s output (local or through a context); the verdict's
/// exit code.
pub fn print_report(r: &serde_json::Value, json: bool) -> anyhow::Result<i32> {
    let code = match r["verdict"].as_str() {
        Some("ok") => 0,
        Some("warning") => 1,
        _ => 3,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(code);
    }
    let live = r["hosts_examined"].as_u64().unwrap_or(0);
    let findings = r["findings"].as_array().cloned().unwrap_or_default();
    if findings.is_empty() {
        println!(
            "all clear: {live} host(s) examined{}",
            if r["probed"] == true {
                ", all probed"
            } else {
                ""
            }
        );
        return Ok(code);
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    print!(
        "{}",
        crate::table::render(
            &["SEVERITY", "HOST", "CHECK", "DETAIL"],
            findings.iter().map(|f| {
                vec![
                    if f["severity"] == "error" {
                        "ERROR".to_string()
                    } else {
                        "warning".to_string()
                    },
                    f["host"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| "(master)".into()),
                    text(&f["check"]),
                    text(&f["detail"]),
                ]
            })
        )
    );
    let errors = findings.iter().filter(|f| f["severity"] == "error").count();
    println!(
        "{errors} error(s), {} warning(s) across {live} host(s)",
        findings.len() - errors
    );
    Ok(code)
}
