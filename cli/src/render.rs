//! What fleet commands print when they end, locally or at the end of a
//! followed job: a deploy's summary, a teardown, a rollout's table, a
//! rollback, and the evidence of a refused release. Every string a worker
//! sent goes through [`inert`].

use decnet_api::{HostDeploy, ProbeFailure, UpdateOutcome, UpdateResult as HostResult};

use crate::exit::partial;
use crate::table::inert;

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
