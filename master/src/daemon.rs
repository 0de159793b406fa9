//! `decnet master serve`: the control API and the log listener on the
//! server runner, sharing the master's live TLS material, plus the
//! housekeeping that keeps them honest — retiring replaced certificates,
//! publishing the CRL (and enforcing it on the master's own handshakes),
//! picking up a rotated master certificate, marking silent hosts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use decnet_fleet::{CrlPublisher, FleetDb, RenewPolicy};
use decnet_pki::{ClientAuth, MaterialSource};
use decnet_server::{HttpLimits, HttpService, Server, ServerLimits, Transport};
use tokio_util::sync::CancellationToken;

use crate::control_api::{ControlPolicy, ControlState, REFUSAL_AUDIT_WINDOW};
use crate::home::MasterHome;
use crate::listener_cmd::ListenerSettings;
use crate::usage::UsageError;

/// Settings of `decnet master serve`.
#[derive(Clone, Debug)]
pub struct MasterSettings {
    /// Control API address.
    pub api: SocketAddr,
    /// The fleet API's address (operators; `None`: not served).
    pub fleet_api: Option<SocketAddr>,
    /// The web console's address (`None`: not served).
    pub console: Option<SocketAddr>,
    /// The log listener beside it (`None`: `--no-listener`).
    pub listener: Option<ListenerSettings>,
    /// Silence after which a host is marked unreachable.
    pub unreachable_after: Duration,
    /// Renewal rules.
    pub renew: RenewPolicy,
    /// The `/metrics` endpoint, if asked for.
    pub metrics: decnet_server::metrics::MetricsArgs,
    /// Audit entries older than this are deleted (`None`: kept forever).
    pub audit_retention: Option<Duration>,
}

/// How often housekeeping runs: a revocation (decommission, burn, a
/// master rotation) reaches the master's own servers — and closes the open
/// connections of the revoked — within this.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Run the master daemons until SIGTERM/SIGINT.
pub async fn serve(home: &MasterHome, db: FleetDb, s: &MasterSettings) -> anyhow::Result<()> {
    let layout = home.ca_layout();
    // The event bus first: the listener, the jobs and every audit entry
    // publish on it.
    let events = crate::events::Events::new();
    crate::events::install(&events);
    {
        let events = events.clone();
        db.set_audit_tap(Box::new(move |e| events.audit(e)));
    }
    let cas = crate::authorities::Authorities::load(&layout, &db).await?;
    let bundle = crate::authorities::master_bundle_trusting(&layout, &cas)?;
    let crl = Arc::new(CrlPublisher::new());
    crl.refresh(&db, &cas.trusted_refs())
        .await
        .context("building the revocation list")?;
    if let Some(rot) = &cas.rotation {
        tracing::info!(
            direction = rot.direction.as_str(),
            "resuming the CA rotation under way"
        );
    }
    let ca = crate::authorities::LiveAuthorities::new(cas);
    let material = MaterialSource::from_parts(bundle, crl.current())
        .context("building the TLS configuration")?;
    let api = Server::bind(
        "control-api",
        s.api,
        Transport::Tls {
            material: material.clone(),
            auth: ClientAuth::Optional,
        },
        ServerLimits {
            // One kept-alive connection per worker (heartbeats), many workers.
            max_connections: 20_000,
            max_connections_per_identity: 8,
            // Its anonymous peers are joiners: a party holding every join
            // slot from a few networks cannot keep the others out.
            evict_anonymous: true,
            ..ServerLimits::default()
        },
    )
    .await
    .map_err(|e| UsageError(e.to_string()))?;
    println!(
        "decnet master control API listening on {}",
        api.local_addr()
    );
    let listener = match &s.listener {
        Some(ls) => {
            let l = crate::listener_cmd::bind(
                Some(&material),
                db.clone(),
                ls,
                crate::listener_cmd::ListenerHost::BesideTheMaster,
            )
            .await?;
            decnet_log_relay::metrics::listener_metrics();
            println!("decnet listener listening on {}", l.local_addr());
            Some(l)
        }
        None => None,
    };
    // The fleet API: operator certificates only, on a listener of its own.
    let fleet_api = match s.fleet_api {
        Some(addr) => {
            let server = Server::bind(
                "fleet-api",
                addr,
                Transport::Tls {
                    material: material.clone(),
                    auth: ClientAuth::Required,
                },
                ServerLimits::default(),
            )
            .await
            .map_err(|e| UsageError(e.to_string()))?;
            println!(
                "decnet master fleet API listening on {}",
                server.local_addr()
            );
            Some(server)
        }
        None => None,
    };
    // The console: TLS with the master's certificate, no client
    // certificate asked (browsers sign in with a session).
    let console = match s.console {
        Some(addr) => {
            let server = Server::bind(
                "console",
                addr,
                Transport::Tls {
                    material: material.clone(),
                    auth: ClientAuth::None,
                },
                // Every browser is anonymous to the runner (its session is
                // checked per request): room for a team behind one address,
                // each browser holding a few connections and a stream.
                // A browser's connection carries a signed-in session: never
                // closed to make room for a stranger (no `evict_anonymous`).
                ServerLimits {
                    max_anonymous: 4096,
                    max_anonymous_per_source: 256,
                    max_anonymous_per_network: 1024,
                    ..ServerLimits::default()
                },
            )
            .await
            .map_err(|e| UsageError(format!("--console-port: {e}")))?;
            println!(
                "decnet master console listening on https://{}",
                server.local_addr()
            );
            Some(server)
        }
        None => None,
    };
    crate::metrics::master_metrics();
    decnet_server::metrics::start_metrics(&s.metrics, "decnet master", Some(&material))
        .await
        .map_err(|e| UsageError(format!("--metrics-addr: {e}")))?;
    let host_view = tokio::spawn(crate::metrics::keep_host_view(db.clone()));
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        decnet_server::shutdown_signal().await;
        trigger.cancel();
    });
    let silent = tokio::spawn(crate::control_api::mark_silent_hosts(
        db.clone(),
        s.unreachable_after,
        events.clone(),
    ));
    {
        // Open event streams end with the daemon (or its servers would
        // wait for them forever).
        let (stop, closing) = (stop.clone(), events.bus.closing.clone());
        tokio::spawn(async move {
            stop.cancelled().await;
            closing.cancel();
        });
    }
    let alerts = crate::alerts::Alerts::new(db.clone())?;
    let deliverer = tokio::spawn(alerts.clone().run(events.bus.clone()));
    let pool = crate::fleet_ops::SharedPool::new(crate::fleet_ops::worker_pool(&layout)?);
    let upkeep = tokio::spawn(housekeeping(Upkeep {
        db: db.clone(),
        ca: ca.clone(),
        crl: crl.clone(),
        material: material.clone(),
        layout: layout.clone(),
        pool: pool.clone(),
        audit_retention: s.audit_retention,
        events: events.clone(),
    }));
    let api_state = Arc::new(crate::fleet_api::FleetApiState {
        db: db.clone(),
        ca: ca.clone(),
        layout: layout.clone(),
        home: home.clone(),
        pool: pool.clone(),
        events: events.clone(),
        alerts: alerts.clone(),
        console_port: console.as_ref().map(|c| c.local_addr().port()),
    });
    let console_task = console.map(|server| {
        let app = HttpService::new(
            crate::console::router(api_state.clone()),
            crate::console::SessionPolicy,
            HttpLimits {
                request_timeout: std::time::Duration::from_secs(30 * 60),
                ..HttpLimits::default()
            },
        );
        let stop = stop.clone();
        tokio::spawn(async move {
            server
                .serve(app, async move { stop.cancelled().await })
                .await
        })
    });
    let fleet_api_task = fleet_api.map(|server| {
        let port = server.local_addr().port();
        let app = HttpService::new(
            crate::fleet_api::router(api_state.clone()),
            decnet_server::RoleSet(vec![decnet_pki::RoleKind::Operator]),
            // Operators' requests run fleet operations (a rollback waits
            // for a health probe, a release upload streams in): the handler
            // gets longer; slow request heads are still cut at the default.
            HttpLimits {
                request_timeout: std::time::Duration::from_secs(30 * 60),
                ..HttpLimits::default()
            },
        );
        let stop = stop.clone();
        (
            port,
            tokio::spawn(async move {
                server
                    .serve(app, async move { stop.cancelled().await })
                    .await
            }),
        )
    });
    let job_sweep = tokio::spawn(crate::jobs::sweep_stale_jobs(db.clone()));
    let mut control = ControlState::new(db.clone(), ca, crl, s.renew.clone(), events.clone());
    control.fleet_api_port = fleet_api_task.as_ref().map(|(port, _)| *port);
    let state = Arc::new(control);
    let refusal_flush = tokio::spawn(crate::control_api::flush_refusal_audits(state.clone()));
    let app = HttpService::new(
        crate::control_api::router(state.clone()),
        ControlPolicy,
        HttpLimits {
            // Heartbeats come every 30 s (±20 %) on a kept-alive connection.
            header_timeout: Duration::from_secs(75),
            ..HttpLimits::default()
        },
    );
    let api_stop = stop.clone();
    let api_task = api.serve(app, async move { api_stop.cancelled().await });
    let result = match listener {
        Some(l) => {
            let l_stop = stop.clone();
            let (_, l) = tokio::join!(api_task, l.run(async move { l_stop.cancelled().await }));
            l
        }
        None => {
            api_task.await;
            Ok(())
        }
    };
    if let Some((_, task)) = fleet_api_task {
        let _ = task.await;
    }
    if let Some(task) = console_task {
        let _ = task.await;
    }
    job_sweep.abort();
    deliverer.abort();
    silent.abort();
    upkeep.abort();
    refusal_flush.abort();
    // What the refusal windows still count is written before leaving.
    let rest = state
        .refusals
        .due(std::time::Instant::now() + REFUSAL_AUDIT_WINDOW);
    if let Err(e) = db.audit_all(&rest).await {
        tracing::warn!(error = %e, "cannot write aggregated refusals");
    }
    host_view.abort();
    result
}

/// A host certificate this close to its end, not yet renewed, is announced
/// (`cert.expiring`): renewal is automatic, so one this near means a host
/// that cannot renew.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(3 * 86_400);

/// Publish `cert.expiring` for each current host certificate within
/// [`EXPIRY_WARNING`] of its end (once per certificate per daemon run).
async fn warn_expiring(
    db: &FleetDb,
    events: &crate::events::Events,
    warned: &mut std::collections::HashSet<String>,
) {
    let (Ok(hosts), Ok(expiry)) = (db.hosts().await, db.current_certificate_expiry().await) else {
        return;
    };
    let now = decnet_fleet::unix_now();
    for h in hosts
        .iter()
        .filter(|h| h.status.as_str() != "decommissioned")
    {
        for (role, fp) in [
            ("agent", &h.agent_fingerprint),
            ("updater", &h.updater_fingerprint),
        ] {
            let Some(fp) = fp else { continue };
            let Some(&not_after) = expiry.get(fp) else {
                continue;
            };
            if not_after - now < EXPIRY_WARNING.as_secs() as i64 && warned.insert(fp.clone()) {
                events.bus.publish(
                    decnet_api::EventTopic::Cert,
                    "cert.expiring",
                    Some(&h.name),
                    serde_json::json!({"role": role, "fingerprint": fp, "not_after": not_after}),
                );
            }
        }
    }
}

/// Retire replaced certificates whose grace is over, publish a new CRL when
/// the deny list grew (and enforce it on the master's own servers), and
/// switch to a rotated master certificate.
/// How long an ended job (its hosts and progress lines) is kept.
pub const JOB_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// What housekeeping keeps honest.
struct Upkeep {
    db: FleetDb,
    ca: Arc<crate::authorities::LiveAuthorities>,
    crl: Arc<CrlPublisher>,
    material: MaterialSource,
    layout: decnet_pki::CaLayout,
    pool: crate::fleet_ops::SharedPool,
    audit_retention: Option<Duration>,
    events: crate::events::Events,
}

async fn housekeeping(u: Upkeep) {
    let Upkeep {
        db,
        ca,
        crl,
        material,
        layout,
        pool,
        audit_retention,
        events,
    } = u;
    let mut warned_expiry = std::collections::HashSet::new();
    let master_dir = layout.master_dir();
    // The warm worker pool is built from the master bundle and the CRL
    // beside it: rebuilt when either changes, or the daemon would keep
    // dialing workers with a revoked certificate (and trusting revoked
    // workers).
    let rebuild = |why: &str| match crate::fleet_ops::worker_pool(&layout) {
        Ok(p) => {
            pool.replace(p);
            tracing::info!(why, "worker pool rebuilt");
        }
        Err(e) => tracing::error!(error = %e, why, "cannot rebuild the worker pool"),
    };
    let mut round: u64 = 0;
    loop {
        tokio::time::sleep(HOUSEKEEPING).await;
        round += 1;
        if round.is_multiple_of(60)
            && let Err(e) = db.prune_join_attempts().await
        {
            tracing::warn!(error = %e, "cannot prune old join attempts");
        }
        if let Some(keep) = audit_retention
            && round % 3600 == 1
        {
            let before = decnet_fleet::unix_now() - keep.as_secs() as i64;
            match db.prune_audit(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(entries = n, "audit entries past their retention deleted"),
                Err(e) => tracing::warn!(error = %e, "cannot prune the audit log"),
            }
        }
        if round % 3600 == 2 {
            let before = decnet_fleet::unix_now() - JOB_RETENTION.as_secs() as i64;
            match db.prune_finished_jobs(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "jobs past their retention deleted"),
                Err(e) => tracing::warn!(error = %e, "cannot prune old jobs"),
            }
        }
        if round % 600 == 5 {
            warn_expiring(&db, &events, &mut warned_expiry).await;
        }
        match db.retire_due().await {
            Ok(r) if !r.is_empty() => {
                tracing::info!(count = r.len(), "replaced certificates retired (revoked)")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot retire replaced certificates"),
        }
        // A CA rotation moved (here or on another master, or by the CLI):
        // the CAs, the master's trust set and the pool follow.
        match db.rotation().await {
            Ok(rot) if rot != ca.current().rotation => {
                match crate::authorities::Authorities::load_with(&layout, rot) {
                    Ok(next) => {
                        match crate::authorities::master_bundle_trusting(&layout, &next) {
                            Ok(b) => {
                                if let Err(e) = material.set_bundle(b) {
                                    tracing::error!(error = %e, "cannot trust the CAs of the rotation");
                                }
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot write the master's trust set")
                            }
                        }
                        tracing::info!(trust = %&next.digest[..16], rotation = ?next.rotation.as_ref().map(|r| r.direction.as_str()), "CA rotation moved; trust set in force");
                        ca.replace(next);
                        rebuild("CA rotation");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot load the CAs of the rotation under way")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the CA rotation"),
        }
        let cas = ca.current();
        match crl.refresh(&db, &cas.trusted_refs()).await {
            Ok(Some(list)) => {
                let number = list.number();
                // Beside the master bundle, for the CLI's worker pool.
                if let Err(e) = decnet_pki::Bundle::save_crl(&master_dir, &list) {
                    tracing::warn!(error = %e, "cannot store the revocation list beside the master bundle");
                }
                match material.set_crl(list) {
                    Ok(_) => tracing::info!(number, "revocation list published"),
                    Err(e) => tracing::error!(error = %e, "cannot enforce the new revocation list"),
                }
                rebuild("new revocation list");
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot build the revocation list"),
        }
        let fp = material.current().bundle().identity.fingerprint;
        if let Some(rotated) = decnet_fleet::revocation::master_bundle_changed(&master_dir, &fp) {
            let new_fp = rotated.identity.fingerprint;
            match material.set_bundle(rotated) {
                Ok(()) => {
                    tracing::info!(fingerprint = %new_fp, "rotated master certificate in use")
                }
                Err(e) => tracing::error!(error = %e, "cannot use the rotated master certificate"),
            }
            rebuild("rotated master certificate");
        }
    }
}
