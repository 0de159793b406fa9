//! The fleet database suite, run on SQLite (always) and on PostgreSQL (when
//! `DECNET_TEST_POSTGRES_URL` names a server; `.ci/run` starts one and sets it).

use decnet_fleet::{
    AuditEntry, AuditOutcome, CertRecord, CertRole, FleetDb, HostRecord, HostStatus, UpdateKind,
    UpdateOutcome, UpdateRecord, unix_now,
};

fn host(name: &str, agent_fp: &str) -> HostRecord {
    let mut h = HostRecord::new(name, "10.0.0.1", 8765, 8766);
    h.sans = vec!["10.0.0.1".into(), name.into()];
    h.agent_fingerprint = Some(agent_fp.into());
    h
}

fn cert(host: &str, fp: &str, role: CertRole) -> CertRecord {
    CertRecord {
        fingerprint: fp.into(),
        host: host.into(),
        role,
        serial: "01".into(),
        not_after: unix_now() + 1000,
        ca: None,
    }
}

/// Heartbeats recorded in batches: one statement per chunk of beats,
/// across a chunk boundary, with every rule a single beat followed.
async fn heartbeats(db: &FleetDb) {
    use decnet_fleet::db::{BEATS_PER_STATEMENT, Beat};
    let n = BEATS_PER_STATEMENT + 3;
    for i in 0..n {
        let name = format!("hb-{i}");
        db.record_enrollment(
            &host(&name, &format!("hbfp{i}")),
            &[cert(&name, &format!("hbfp{i}"), CertRole::Agent)],
        )
        .await
        .unwrap();
    }
    assert!(db.mark_suspect("hb-1", "two holders").await.unwrap());
    assert!(db.request_renewal("hb-2").await.unwrap());
    db.decommission("hb-3").await.unwrap();
    let beat = |i: usize, state: Option<&str>| Beat {
        host: format!("hb-{i}"),
        version: format!("1.{i}"),
        state: state.map(str::to_string),
        clock_skew_ms: Some(i as i64 - 7),
        trust: Some(format!("{i:064x}")),
    };
    let mut beats: Vec<Beat> = (0..n).map(|i| beat(i, Some("[{\"id\":\"d1\"}]"))).collect();
    beats.push(Beat {
        host: "hb-unknown".into(),
        ..beat(0, None)
    });
    let flags = db.record_heartbeats(&beats).await.unwrap();
    // Every host but the decommissioned and the unknown one, each once,
    // the renewal asked only of hb-2.
    assert_eq!(flags.len(), n - 1);
    let mut names: Vec<&str> = flags.iter().map(|(h, _)| h.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n - 1);
    assert!(!names.contains(&"hb-3") && !names.contains(&"hb-unknown"));
    for (h, renew) in &flags {
        assert_eq!(*renew, h == "hb-2", "{h}");
    }
    let last = format!("hb-{}", n - 1);
    for (name, i) in [("hb-0", 0), (last.as_str(), n - 1)] {
        let h = db.host(name).await.unwrap().unwrap();
        assert_eq!(h.status, HostStatus::Active, "{name}");
        assert_eq!(h.agent_version.as_deref(), Some(format!("1.{i}").as_str()));
        assert_eq!(h.clock_skew_ms, Some(i as i64 - 7));
        assert_eq!(h.state_json.as_deref(), Some("[{\"id\":\"d1\"}]"));
        assert!(h.last_heartbeat.is_some());
    }
    // A suspect host stays suspect; a decommissioned one is not revived.
    assert_eq!(
        db.host("hb-1").await.unwrap().unwrap().status,
        HostStatus::Suspect
    );
    assert_eq!(
        db.host("hb-3").await.unwrap().unwrap().status,
        HostStatus::Decommissioned
    );
    // A beat without state or skew keeps what the last one reported.
    db.record_heartbeats(&[Beat {
        state: None,
        clock_skew_ms: None,
        trust: None,
        ..beat(0, None)
    }])
    .await
    .unwrap();
    let h = db.host("hb-0").await.unwrap().unwrap();
    assert_eq!(h.state_json.as_deref(), Some("[{\"id\":\"d1\"}]"));
    assert_eq!(h.clock_skew_ms, Some(-7));
    assert!(db.record_heartbeats(&[]).await.unwrap().is_empty());
}

#[path = "fleet_db/issuance.rs"]
mod issuance;
#[path = "../../tests/src/skip.rs"]
mod skip;

async fn exercise(db: FleetDb) {
    // Enrollment and lookup.
    let revoked = db
        .record_enrollment(&host("w1", "fp1"), &[cert("w1", "fp1", CertRole::Agent)])
        .await
        .unwrap();
    assert!(revoked.is_empty());
    let h = db.host("w1").await.unwrap().unwrap();
    assert_eq!(h.agent_fingerprint.as_deref(), Some("fp1"));
    assert_eq!(h.sans, vec!["10.0.0.1", "w1"]);
    assert_eq!(h.status, HostStatus::Enrolled);
    assert!(db.host("nope").await.unwrap().is_none());
    assert_eq!(db.certificate("fp1").await.unwrap().unwrap().host, "w1");

    // Reissue: the old fingerprint goes on the deny list.
    let revoked = db
        .record_enrollment(
            &host("w1", "fp2"),
            &[
                cert("w1", "fp2", CertRole::Agent),
                cert("w1", "ufp2", CertRole::Updater),
            ],
        )
        .await
        .unwrap();
    assert_eq!(revoked, vec!["fp1"]);
    assert!(db.is_revoked("fp1").await.unwrap());
    assert!(!db.is_revoked("fp2").await.unwrap());
    assert_eq!(db.revoked_of("w1").await.unwrap(), vec!["fp1"]);

    // Contact and endpoint changes.
    db.record_contact("w1", Ok((Some("1.2.3"), Some("[]"))))
        .await
        .unwrap();
    let h = db.host("w1").await.unwrap().unwrap();
    assert_eq!(h.status, HostStatus::Active);
    assert_eq!(h.agent_version.as_deref(), Some("1.2.3"));
    assert!(h.last_seen.is_some());
    db.record_contact("w1", Err("connection refused"))
        .await
        .unwrap();
    let h = db.host("w1").await.unwrap().unwrap();
    assert_eq!(h.status, HostStatus::Unreachable);
    assert_eq!(h.last_error.as_deref(), Some("connection refused"));
    // A fleet-wide probe records every outcome in one transaction.
    db.record_contacts(&[
        decnet_fleet::Contact {
            host: "w1".into(),
            outcome: Ok((Some("1.2.4".into()), Some("[1]".into()))),
        },
        decnet_fleet::Contact {
            host: "ghost".into(),
            outcome: Err("no such host is harmless".into()),
        },
    ])
    .await
    .unwrap();
    let h = db.host("w1").await.unwrap().unwrap();
    assert_eq!(h.status, HostStatus::Active);
    assert_eq!(h.agent_version.as_deref(), Some("1.2.4"));
    assert_eq!(h.state_json.as_deref(), Some("[1]"));
    assert!(h.last_error.is_none());
    db.record_contacts(&[decnet_fleet::Contact {
        host: "w1".into(),
        outcome: Err("timed out".into()),
    }])
    .await
    .unwrap();
    let h = db.host("w1").await.unwrap().unwrap();
    assert_eq!(h.status, HostStatus::Unreachable);
    assert_eq!(h.last_error.as_deref(), Some("timed out"));
    assert_eq!(h.agent_version.as_deref(), Some("1.2.4"), "kept on failure");
    assert!(
        db.update_endpoint("w1", Some("10.9.9.9"), Some(9000), None)
            .await
            .unwrap()
    );
    let h = db.host("w1").await.unwrap().unwrap();
    assert_eq!(
        (h.address.as_str(), h.agent_port, h.updater_port),
        ("10.9.9.9", 9000, 8766)
    );
    assert!(
        !db.update_endpoint("ghost", None, Some(1), None)
            .await
            .unwrap()
    );

    // Decommission revokes everything still valid.
    let mut newly = db.decommission("w1").await.unwrap();
    newly.sort();
    assert_eq!(newly, vec!["fp2", "ufp2"]);
    assert_eq!(
        db.host("w1").await.unwrap().unwrap().status,
        HostStatus::Decommissioned
    );
    db.record_contact("w1", Ok((None, None))).await.unwrap();
    assert_eq!(
        db.host("w1").await.unwrap().unwrap().status,
        HostStatus::Decommissioned,
        "contact never revives a decommissioned host"
    );

    // Audit log and update history, with concurrent writers.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            db.audit(&AuditEntry::now(
                "test",
                "swarm.test",
                &format!("t{i}"),
                AuditOutcome::Ok,
                "",
            ))
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(db.audit_log(100).await.unwrap().len(), 20);
    // A fleet-wide command's batch: all in one transaction, each kept.
    let batch: Vec<AuditEntry> = (0..300)
        .map(|i| {
            AuditEntry::now(
                "test",
                "swarm.deploy",
                &format!("b{i}"),
                AuditOutcome::Partial,
                format!("operation=op{i}"),
            )
        })
        .collect();
    db.audit_all(&batch).await.unwrap();
    db.audit_all(&[]).await.unwrap();
    let log = db.audit_log(1000).await.unwrap();
    assert_eq!(log.len(), 320);
    let b7 = log.iter().find(|e| e.target == "b7").expect("b7 audited");
    assert_eq!(
        (b7.action.as_str(), b7.outcome, b7.detail.as_str()),
        ("swarm.deploy", AuditOutcome::Partial, "operation=op7")
    );
    // Searches: each filter alone and together.
    db.audit(&AuditEntry::now(
        "operator:alice",
        "swarm.burn",
        "w9",
        AuditOutcome::Ok,
        "",
    ))
    .await
    .unwrap();
    let search = |actor: Option<&str>, action: Option<&str>, target: Option<&str>| {
        decnet_fleet::AuditSearch {
            limit: 1000,
            actor: actor.map(Into::into),
            action: action.map(Into::into),
            target: target.map(Into::into),
            since: None,
            until: None,
        }
    };
    for (actor, action, target, want) in [
        (None, None, None, 321),
        (None, Some("swarm.te"), None, 20),
        (None, Some("swarm_te"), None, 0),
        (None, None, Some("t3"), 1),
        (Some("alice"), None, None, 1),
        (Some("operator:alice"), Some("swarm.burn"), Some("w9"), 1),
        (Some("alice"), Some("swarm.burn"), Some("w8"), 0),
        (Some("bob"), None, None, 0),
        (None, Some("swarm.deploy"), Some("b7"), 1),
    ] {
        let found = db
            .audit_search(&search(actor, action, target))
            .await
            .unwrap();
        assert_eq!(found.len(), want, "{actor:?} {action:?} {target:?}");
    }
    let mut newest = search(None, None, None);
    newest.limit = 5;
    newest.since = Some(0);
    assert_eq!(db.audit_search(&newest).await.unwrap().len(), 5);
    newest.until = Some(1);
    assert!(db.audit_search(&newest).await.unwrap().is_empty());
    db.record_update(&UpdateRecord {
        host: "w1".into(),
        at: unix_now(),
        kind: UpdateKind::Update,
        release: "v1".into(),
        sha256: "ab".into(),
        outcome: UpdateOutcome::Updated,
        detail: "ok".into(),
    })
    .await
    .unwrap();
    let hist = db.update_history("w1", 10).await.unwrap();
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0].release, "v1");
    assert_eq!(hist[0].outcome, UpdateOutcome::Updated);
    assert_eq!(db.hosts().await.unwrap().len(), 1);
}

#[tokio::test]
async fn fleet_db_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fleet.db").display()
    );
    let db = FleetDb::connect(&url).await.unwrap();
    exercise(db.clone()).await;
    // Reopening applies no migration twice and sees the data.
    db.close().await;
    let again = FleetDb::connect(&url).await.unwrap();
    assert_eq!(again.hosts().await.unwrap().len(), 1);
    // The database file and its WAL/SHM files are private from creation.
    use std::os::unix::fs::PermissionsExt;
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let f = f.unwrap();
        let mode = f.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.path().display());
    }
    issuance::all(&again).await;
    heartbeats(&again).await;
}

/// An operator's audit searches, however many at once, leave database
/// connections to the fleet (the attacker: a viewer's certificate sending
/// searches that scan the whole log, over and over). With a log large
/// enough that a search scans for a while, a small query made while eight
/// such searches are in flight is answered at once, not after one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_searches_leave_connections_for_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fleet.db").display()
    );
    let db = FleetDb::connect(&url).await.unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600000) \
         INSERT INTO audit_log (id, at, actor, action, target, outcome, detail, source) \
         SELECT 'noise' || i, i, 'operator:noise', 'swarm.noise', 'h' || (i % 1000), 'ok', \
         'a detail as long as a real one', NULL FROM n",
    )
    .execute(db.pool())
    .await
    .unwrap();
    // No entry's action starts with this: a search for it reads every row.
    let scan = decnet_fleet::AuditSearch {
        limit: 50,
        actor: None,
        action: Some("nothing.".into()),
        target: None,
        since: None,
        until: None,
    };
    let started = std::time::Instant::now();
    assert!(db.audit_search(&scan).await.unwrap().is_empty());
    let one_scan = started.elapsed();
    let searches: Vec<_> = (0..8)
        .map(|_| {
            let (db, scan) = (db.clone(), scan.clone());
            tokio::spawn(async move { db.audit_search(&scan).await.map(|r| r.len()) })
        })
        .collect();
    // The searches hold what connections they may.
    tokio::time::sleep(one_scan / 4).await;
    let asked = std::time::Instant::now();
    db.hosts().await.unwrap();
    let answered = asked.elapsed();
    for s in searches {
        assert_eq!(s.await.unwrap().unwrap(), 0);
    }
    assert!(
        answered < one_scan / 2,
        "a query waited {answered:?} behind audit searches (one scan takes {one_scan:?})"
    );
}

#[tokio::test]
async fn fleet_db_on_postgres() {
    let Ok(admin_url) = std::env::var("DECNET_TEST_POSTGRES_URL") else {
        skip::missing(
            "\n!!! DECNET_TEST_POSTGRES_URL not set: the PostgreSQL run was NOT done (scripts/test.sh sets it)\n",
        );
        return;
    };
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&admin_url)
        .await
        .expect("connect to the test PostgreSQL");
    let name = format!("decnet_test_{}", decnet_pki::random_hex(6));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let (base, query) = admin_url
        .split_once('?')
        .map(|(b, q)| (b, format!("?{q}")))
        .unwrap_or((&admin_url, String::new()));
    let base = &base[..base.rfind('/').unwrap()];
    let url = format!("{base}/{name}{query}");
    let db = FleetDb::connect(&url).await.unwrap();
    assert_eq!(db.backend(), decnet_fleet::Backend::Postgres);
    exercise(db.clone()).await;
    db.close().await;
    let again = FleetDb::connect(&url).await.unwrap();
    assert_eq!(again.hosts().await.unwrap().len(), 1);
    issuance::all(&again).await;
    heartbeats(&again).await;
    again.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
}
