//! `decnet ca rotation start|status|finish|abort`: replacing the fleet's CA
//! while every host keeps working.
//!
//! `start` makes a successor CA beside the current one, with an
//! endorsement each way, and records the rotation; from then on every
//! master trusts both and signs with the successor, workers take the new
//! trust set at their next heartbeat (or revocation-list refresh) and renew
//! under the successor at once. `finish` — refused while a host or an
//! operator still depends on the old CA, unless forced — reissues the
//! master's certificate under the successor, makes it the CA, and destroys
//! (or archives) the old key; workers then drop the old CA from their trust
//! set. `abort` turns the rotation around: the old CA signs again, hosts
//! renew back under it, and the successor is destroyed. Every step is
//! audited; the state lives in the fleet database and the CA directory, so
//! a restarted master, or a second one, follows it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use decnet_fleet::AuditOutcome;
use decnet_fleet::ca_rotation::{HostCa, RotationDirection, RotationRecord};
use decnet_pki::{CertificateAuthority, secure_fs};

use crate::authorities::{
    Authorities, ENDORSEMENTS_FILE, endorsements_path, master_bundle_trusting, successor_layout,
};
use crate::home::MasterHome;
use crate::usage::{UsageError, audit, load_ca, open_db};

/// `decnet ca rotation start`.
pub async fn start(home: &MasterHome, json: bool) -> anyhow::Result<()> {
    let layout = home.ca_layout();
    let db = open_db(home).await?;
    if let Some(r) = db.rotation().await? {
        return Err(UsageError(format!(
            "a CA rotation is already under way (started {}, {}); see `decnet ca rotation status`",
            crate::table::format_time(r.started_at),
            r.direction.as_str()
        ))
        .into());
    }
    let current = load_ca(&layout)?;
    let next = CertificateAuthority::generate_successor().context("generating the new CA")?;
    let endorsements = current
        .endorsements_for(&next)
        .context("endorsing the new CA")?;
    // Files first: a crash before the database row leaves files that the
    // next `start` overwrites.
    let next_layout = successor_layout(&layout);
    next.save(&next_layout)
        .context("writing the new CA beside the current one")?;
    secure_fs::write_atomic(
        &endorsements_path(&layout),
        endorsements.as_bytes(),
        secure_fs::PUBLIC_MODE,
    )
    .with_context(|| format!("writing {ENDORSEMENTS_FILE}"))?;
    let old_fp = current.fingerprint().to_hex();
    let new_fp = next.fingerprint().to_hex();
    db.begin_rotation(&old_fp, &new_fp, &crate::usage::cli_actor())
        .await
        .map_err(|e| UsageError(e.to_string()))?;
    let cas = Authorities::load(&layout, &db).await?;
    master_bundle_trusting(&layout, &cas)?;
    audit(
        &db,
        "ca.rotation.start",
        "ca",
        AuditOutcome::Ok,
        format!("old={old_fp} new={new_fp}"),
    )
    .await?;
    db.close().await;
    if json {
        println!(
            "{}",
            serde_json::json!({"phase": "rotating", "old_ca": old_fp, "new_ca": new_fp})
        );
        return Ok(());
    }
    println!("CA rotation started");
    println!("  old CA (sha256): {old_fp}");
    println!("  new CA (sha256): {new_fp}");
    println!(
        "Every master trusts both CAs and signs with the new one now. Workers take the new trust set at their next heartbeat and renew under the new CA; watch it with `decnet ca rotation status`, then run `decnet ca rotation finish`."
    );
    println!(
        "Third-party syslog senders: add {}/ca.crt (both CAs) to their trust now, and give them certificates of the new CA before finish.",
        layout.master_dir().display()
    );
    Ok(())
}

/// Which side of the rotation `ca` is.
fn side(ca: Option<&str>, r: &RotationRecord) -> &'static str {
    match ca {
        Some(c) if c == r.old_ca => "old",
        Some(c) if c == r.new_ca => "new",
        Some(_) => "other",
        None => "unknown",
    }
}

/// Hosts that count: not decommissioned or burned (their certificates are
/// revoked already).
fn counted(hosts: Vec<HostCa>) -> Vec<HostCa> {
    hosts.into_iter().filter(|h| h.status != "burned").collect()
}

/// Who still depends on `ca`: hosts (`NAME (agent|updater)`) and operator
/// or monitor CNs.
async fn dependents(db: &decnet_fleet::FleetDb, ca: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for h in counted(db.host_cas().await?) {
        if h.agent_ca.as_deref() == Some(ca) {
            out.push(format!("{} (agent)", h.host));
        }
        if h.has_updater && h.updater_ca.as_deref() == Some(ca) {
            out.push(format!("{} (updater)", h.host));
        }
    }
    for c in db.clients_of_ca(ca).await? {
        out.push(c.cn);
    }
    Ok(out)
}

/// `decnet ca rotation status`.
pub async fn status(home: &MasterHome, json: bool) -> anyhow::Result<()> {
    let layout = home.ca_layout();
    let db = open_db(home).await?;
    let cas = Authorities::load(&layout, &db).await?;
    let Some(r) = cas.rotation.clone() else {
        db.close().await;
        let fp = cas.signing.fingerprint().to_hex();
        if json {
            println!(
                "{}",
                serde_json::json!({"phase": "none", "ca": fp, "trust": cas.digest})
            );
        } else {
            println!("no CA rotation under way; the CA is {fp}");
        }
        return Ok(());
    };
    let hosts = counted(db.host_cas().await?);
    let leaving = dependents(&db, r.leaving_ca()).await?;
    let clients_old = db.clients_of_ca(&r.old_ca).await?;
    let clients_new = db.clients_of_ca(&r.new_ca).await?;
    db.close().await;
    let phase = match r.direction {
        RotationDirection::Forward => "rotating",
        RotationDirection::Back => "aborting",
    };
    let rows: Vec<serde_json::Value> = hosts
        .iter()
        .map(|h| {
            serde_json::json!({
                "host": h.host,
                "status": h.status,
                "last_seen": h.last_seen,
                "agent_ca": side(h.agent_ca.as_deref(), &r),
                "updater_ca": h.has_updater.then(|| side(h.updater_ca.as_deref(), &r)),
                "trusts_both": h.trust.as_deref().map(|t| t == cas.digest),
            })
        })
        .collect();
    if json {
        let clients: Vec<serde_json::Value> = clients_old
            .iter()
            .map(|c| serde_json::json!({"cn": c.cn, "ca": "old"}))
            .chain(
                clients_new
                    .iter()
                    .map(|c| serde_json::json!({"cn": c.cn, "ca": "new"})),
            )
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "phase": phase,
                "old_ca": r.old_ca,
                "new_ca": r.new_ca,
                "signing_ca": r.signing_ca(),
                "started_at": r.started_at,
                "started_by": r.actor,
                "trust": cas.digest,
                "hosts": rows,
                "clients": clients,
                "waiting_for": leaving,
            })
        );
        return Ok(());
    }
    println!(
        "CA rotation {phase} since {} (by {})",
        crate::table::format_time(r.started_at),
        r.actor
    );
    println!("  old CA: {}", r.old_ca);
    println!(
        "  new CA: {}  (signs new certificates: {})",
        r.new_ca,
        r.signing_ca() == r.new_ca
    );
    let table_rows = hosts.iter().zip(&rows).map(|(h, row)| {
        vec![
            h.host.clone(),
            h.status.clone(),
            row["agent_ca"].as_str().unwrap_or("-").to_string(),
            row["updater_ca"].as_str().unwrap_or("-").to_string(),
            match row["trusts_both"].as_bool() {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "-".into(),
            },
            h.last_seen
                .map(crate::table::format_time)
                .unwrap_or_else(|| "never".into()),
        ]
    });
    print!(
        "{}",
        crate::table::render(
            &[
                "HOST",
                "STATUS",
                "AGENT CA",
                "UPDATER CA",
                "TRUSTS BOTH",
                "LAST SEEN"
            ],
            table_rows
        )
    );
    for c in &clients_old {
        println!("  {} holds a certificate of the old CA", c.cn);
    }
    if leaving.is_empty() {
        println!(
            "Nothing depends on the CA being dropped: `decnet ca rotation {}` completes it.",
            if r.direction == RotationDirection::Forward {
                "finish"
            } else {
                "abort"
            }
        );
    } else {
        println!(
            "Still depending on the CA being dropped: {}",
            leaving.join(", ")
        );
    }
    Ok(())
}

/// Wait up to `wait` for nothing to depend on `ca`; returns who still does.
async fn wait_for_dependents(
    db: &decnet_fleet::FleetDb,
    ca: &str,
    wait: Duration,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + wait;
    loop {
        let left = dependents(db, ca).await?;
        if left.is_empty() || Instant::now() >= deadline {
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What `finish` does with the old CA's key.
#[derive(Clone, Debug)]
pub enum OldKey {
    /// Overwritten and removed.
    Destroy,
    /// Moved to this directory (to be taken offline), then removed here.
    ArchiveTo(PathBuf),
}

/// Overwrite a key file in place with zeros (no truncation: the same
/// blocks), sync, then remove it. On copy-on-write filesystems and SSDs the
/// old blocks may survive: the wiki says so.
fn destroy_key(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    if let Ok(meta) = std::fs::metadata(path) {
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(&vec![0u8; meta.len() as usize])?;
        f.sync_all()?;
        drop(f);
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// `decnet ca rotation finish`.
pub async fn finish(
    home: &MasterHome,
    force: bool,
    old_key: OldKey,
    wait: Duration,
) -> anyhow::Result<()> {
    let layout = home.ca_layout();
    let db = open_db(home).await?;
    let Some(r) = db.rotation().await? else {
        return Err(
            UsageError("no CA rotation under way (`decnet ca rotation start`)".into()).into(),
        );
    };
    if r.direction == RotationDirection::Back {
        return Err(UsageError(
            "the rotation is being aborted; complete it with `decnet ca rotation abort`".into(),
        )
        .into());
    }
    let next_layout = successor_layout(&layout);
    let next =
        CertificateAuthority::load(&next_layout).context("loading the new CA of the rotation")?;
    if next.fingerprint().to_hex() != r.new_ca {
        return Err(UsageError(format!(
            "the new CA in {} is not the one the rotation under way names",
            next_layout.root().display()
        ))
        .into());
    }
    // An earlier finish stopped after the old key was destroyed (no CA, or
    // a torn one): the promotion is completed from the rotation's copy.
    let current = match load_ca(&layout) {
        Ok(c) => c,
        Err(e) => {
            let master = crate::fleet_ops::master_bundle(&layout)?;
            if master.identity.issuer != next.subject() {
                return Err(e);
            }
            eprintln!("completing an interrupted finish: the new CA becomes the CA");
            next.save(&layout).context("making the new CA the CA")?;
            load_ca(&layout)?
        }
    };
    let finishing_again = current.fingerprint().to_hex() == r.new_ca;
    if !finishing_again {
        let left = wait_for_dependents(&db, &r.old_ca, wait).await?;
        if !left.is_empty() {
            if !force {
                return Err(UsageError(format!(
                    "refusing to finish: these still depend on the old CA and would be cut off: {}. Wait for them to renew (`decnet ca rotation status`), or finish with --force to cut exactly them off (hosts rejoin with a token).",
                    left.join(", ")
                ))
                .into());
            }
            eprintln!(
                "WARNING: finishing with --force cuts off: {} (their certificates of the old CA are refused from now on; a host rejoins with `decnet swarm token` + join)",
                left.join(", ")
            );
        }
        // 1. The old key archived first, if asked: a directory that cannot
        // be written stops the finish before anything changed.
        match &old_key {
            OldKey::ArchiveTo(dir) => {
                secure_fs::ensure_private_dir(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let stem = format!("ca-{}", &r.old_ca[..16]);
                let key = secure_fs::read_private_key(&layout.ca_key())?;
                secure_fs::write_atomic(
                    &dir.join(format!("{stem}.key")),
                    key.as_bytes(),
                    secure_fs::KEY_MODE,
                )
                .context("archiving the old CA key")?;
                secure_fs::write_atomic(
                    &dir.join(format!("{stem}.crt")),
                    current.cert_pem().as_bytes(),
                    secure_fs::PUBLIC_MODE,
                )
                .context("archiving the old CA certificate")?;
            }
            OldKey::Destroy => {}
        }
        // 2. The master's certificate under the new CA, trusting it alone
        // (every master switches to it within a second).
        let rotated = decnet_fleet::revocation::rotate_master(&next, &layout, &db, None)
            .await
            .context("reissuing the master certificate under the new CA")?;
        // 3. The old key destroyed, 4. the new CA made the CA. A crash in
        // between leaves no CA key: `finish` again completes it from the
        // rotation's copy (kept until the very end).
        destroy_key(&layout.ca_key()).context("destroying the old CA key")?;
        next.save(&layout).context("making the new CA the CA")?;
        audit(
            &db,
            "ca.rotation.finish",
            "ca",
            AuditOutcome::Ok,
            format!(
                "old={} new={} master={} old_key={} cut_off=[{}]",
                r.old_ca,
                r.new_ca,
                rotated.new_fingerprint,
                match &old_key {
                    OldKey::Destroy => "destroyed".to_string(),
                    OldKey::ArchiveTo(d) => format!("archived to {}", d.display()),
                },
                left.join(",")
            ),
        )
        .await?;
    }
    // 4. The rotation's files and record go.
    destroy_key(&next_layout.ca_key())?;
    let _ = std::fs::remove_dir_all(next_layout.root());
    db.end_rotation().await?;
    db.close().await;
    println!("CA rotation finished: the CA is now {}", r.new_ca);
    match old_key {
        OldKey::Destroy => println!(
            "The OLD CA KEY IS DESTROYED: nothing can ever be signed by it again, and everything it signed is refused."
        ),
        OldKey::ArchiveTo(d) => println!(
            "The OLD CA KEY IS ARCHIVED in {} — take it offline now; nothing here trusts it any more.",
            d.display()
        ),
    }
    println!(
        "Workers drop the old CA from their trust set at their next heartbeat. Operators whose context still names only the old CA log in again."
    );
    Ok(())
}

/// `decnet ca rotation abort`.
pub async fn abort(home: &MasterHome, force: bool, wait: Duration) -> anyhow::Result<()> {
    let layout = home.ca_layout();
    let db = open_db(home).await?;
    let Some(r) = db.rotation().await? else {
        return Err(UsageError("no CA rotation under way".into()).into());
    };
    // A finish that began (the master certificate is the new CA's, or the
    // new CA is the CA already) cannot be turned around: it is completed.
    let master = crate::fleet_ops::master_bundle(&layout)?;
    let finishing = match load_ca(&layout) {
        Ok(c) => c.fingerprint().to_hex() == r.new_ca || master.identity.issuer != c.subject(),
        Err(_) => true,
    };
    if finishing {
        return Err(UsageError(
            "a finish of this rotation began (the master certificate is already the new CA's): run `decnet ca rotation finish` to complete it".into(),
        )
        .into());
    }
    if r.direction == RotationDirection::Forward {
        db.reverse_rotation().await?;
        audit(
            &db,
            "ca.rotation.abort",
            "ca",
            AuditOutcome::Ok,
            format!("old={} new={}", r.old_ca, r.new_ca),
        )
        .await?;
        println!(
            "CA rotation aborted: the old CA signs again; hosts holding certificates of the new CA renew under the old one at their next heartbeat."
        );
    }
    let left = wait_for_dependents(&db, &r.new_ca, wait).await?;
    if !left.is_empty() && !force {
        db.close().await;
        return Err(UsageError(format!(
            "the abort is under way; still holding certificates of the new CA: {}. Run `decnet ca rotation abort` again when they renewed (or add --wait SECS), or with --force to cut exactly them off.",
            left.join(", ")
        ))
        .into());
    }
    if !left.is_empty() {
        eprintln!(
            "WARNING: aborting with --force cuts off: {}",
            left.join(", ")
        );
    }
    // Back to the old CA alone: the master's certificate was never changed.
    let next_layout = successor_layout(&layout);
    db.end_rotation().await?;
    let cas = Authorities::load(&layout, &db).await?;
    master_bundle_trusting(&layout, &cas)?;
    destroy_key(&next_layout.ca_key())?;
    let _ = std::fs::remove_dir_all(next_layout.root());
    audit(
        &db,
        "ca.rotation.abort.complete",
        "ca",
        AuditOutcome::Ok,
        format!(
            "ca={} dropped={} cut_off=[{}]",
            r.old_ca,
            r.new_ca,
            left.join(",")
        ),
    )
    .await?;
    db.close().await;
    println!(
        "CA rotation abort complete: the CA is {} alone; the new CA's key is destroyed.",
        r.old_ca
    );
    Ok(())
}
