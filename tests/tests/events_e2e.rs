//! The event stream and alerts end to end: a real `master serve`, real
//! agents heartbeating every second, operators logged in through contexts,
//! `decnet events --follow` as separate processes and a webhook receiver on
//! loopback. An agent stopped is a signed webhook within the silence
//! threshold and a `host.silent` event; a viewer scoped to another host
//! never sees it; a follower resumes with Last-Event-ID; only an admin
//! adds alerts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use decnet_e2e::{Agent, MasterHome, Operator, wait_for};

/// One request a webhook receiver got.
#[derive(Clone, Debug)]
struct Hook {
    at: Instant,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A webhook receiver on loopback: answers 200 to every POST and keeps it.
fn receiver() -> (u16, Arc<Mutex<Vec<Hook>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let mut r = BufReader::new(conn);
            let mut headers = BTreeMap::new();
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.trim().split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let n: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; n];
            let _ = r.read_exact(&mut body);
            keep.lock().unwrap().push(Hook {
                at: Instant::now(),
                headers,
                body,
            });
            let mut conn = r.into_inner();
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, got)
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`.
fn signature(secret: &str, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// A client of the fleet API holding `ctx`'s operator identity.
fn api_client(ctx: &Path) -> (reqwest::Client, String) {
    let bundle = decnet_pki::Bundle::load(ctx, decnet_pki::BundleKind::Operator).unwrap();
    let cfg =
        decnet_pki::tls::client_config(&bundle, None, &decnet_pki::tls::ExpectedServer::master())
            .unwrap();
    let api = std::fs::read_to_string(ctx.join("fleet-api")).unwrap();
    (
        reqwest::Client::builder()
            .tls_backend_preconfigured(cfg)
            .build()
            .unwrap(),
        format!("https://{}", api.trim()),
    )
}

#[test]
fn a_silent_host_is_a_signed_webhook_and_an_event_only_its_viewers_see() {
    let m = MasterHome::new();
    m.enroll("w1");
    m.enroll("w2");
    let silence = 3;
    let master = m.serve(&["--unreachable-after", &silence.to_string()]);
    let api = master.addr.to_string();
    let beat = ["--master", api.as_str(), "--heartbeat-interval", "1"];
    let mut w1 = Agent::start(&m, "w1", &m.dir.path().join("w1-state"), &beat);
    let _w2 = Agent::start(&m, "w2", &m.dir.path().join("w2-state"), &beat);

    let admin = Operator::login(&m, &master, "root", "admin", &[]);
    let viewer = Operator::login(&m, &master, "vic", "viewer", &["w2"]);
    let (hook_port, hooks) = receiver();
    let webhook = format!("http://127.0.0.1:{hook_port}/hook?token=receiver-secret");

    // Only an admin adds alerts (the viewer is refused, and told why).
    let refused = viewer.run(&[
        "alert",
        "add",
        "mine",
        "--webhook",
        &webhook,
        "--topic",
        "host",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("admin"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // An admin limited to some hosts cannot watch the others through an
    // alert (nor remove the fleet's alerts).
    let scoped_admin = Operator::login(&m, &master, "lab-admin", "admin", &["w2"]);
    let refused = scoped_admin.run(&[
        "alert",
        "add",
        "peek",
        "--webhook",
        &webhook,
        "--topic",
        "host,audit",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("host scope"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let created: serde_json::Value = serde_json::from_str(&admin.ok(&[
        "alert",
        "add",
        "went-dark",
        "--webhook",
        &webhook,
        "--topic",
        "host",
        "--kind",
        "host.silent",
        "--json",
    ]))
    .unwrap();
    let secret = created["secret"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 64);
    // A malformed alert is a clear refusal.
    let bad = admin.run(&[
        "alert",
        "add",
        "x",
        "--webhook",
        "ftp://h/",
        "--topic",
        "host",
    ]);
    assert_eq!(bad.status.code(), Some(2));

    // A test delivery, signed.
    let tested = admin.ok(&["alert", "test", "went-dark"]);
    assert!(tested.contains("delivered"), "{tested}");
    let first = wait_for(Duration::from_secs(10), || {
        hooks.lock().unwrap().first().cloned()
    })
    .expect("the test delivery");
    assert_eq!(
        first.headers.get("x-decnet-signature").unwrap(),
        &signature(&secret, &first.body)
    );
    assert_eq!(first.headers.get("x-decnet-event").unwrap(), "alert.test");

    // Followers: the admin sees everything, the viewer its w2 only.
    let out = tempfile::tempdir().unwrap();
    let all = admin.follow(
        &["--follow", "--json", "--topic", "host,audit"],
        &out.path().join("all"),
    );
    let scoped = viewer.follow(&["--follow", "--json"], &out.path().join("scoped"));
    // Both hosts beat.
    wait_for(Duration::from_secs(20), || {
        let list: serde_json::Value =
            serde_json::from_str(&admin.ok(&["swarm", "list", "--json"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .all(|h| h["status"] == "active")
            .then_some(())
    })
    .expect("both hosts heartbeat");
    std::thread::sleep(Duration::from_millis(1500));

    // w1 goes dark.
    let stopped = Instant::now();
    w1.daemon.stop();
    let silent = wait_for(Duration::from_secs(20), || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .find(|h| h.headers.get("x-decnet-event").map(String::as_str) == Some("host.silent"))
            .cloned()
    })
    .expect("a host.silent webhook");
    let took = silent.at - stopped;
    // The silence threshold, the marking period (1 s) and a heartbeat's jitter.
    assert!(
        took <= Duration::from_secs(silence + 4),
        "the webhook took {took:?}"
    );
    assert_eq!(
        silent.headers.get("x-decnet-signature").unwrap(),
        &signature(&secret, &silent.body),
        "the delivery is signed with the alert's secret"
    );
    let body: serde_json::Value = serde_json::from_slice(&silent.body).unwrap();
    assert_eq!(body["alert"], "went-dark");
    assert_eq!(body["event"]["host"], "w1");
    assert_eq!(body["event"]["topic"], "host");
    let silent_id = body["event"]["id"].as_u64().unwrap();
    // Exactly the matching kind: no host.back, no other host.
    assert!(
        hooks
            .lock()
            .unwrap()
            .iter()
            .all(|h| h.headers.get("x-decnet-event").map(String::as_str) != Some("host.back"))
    );

    // The admin's follower printed it; the viewer's never saw w1.
    let seen = wait_for(Duration::from_secs(10), || {
        all.events()
            .into_iter()
            .find(|e| e["kind"] == "host.silent" && e["host"] == "w1")
    })
    .expect("host.silent in the admin's stream");
    assert_eq!(seen["id"].as_u64(), Some(silent_id));
    // And the audit entry of the alert's creation, with the webhook but
    // never its query (a receiver's token) nor the secret.
    let audit: Vec<_> = all
        .events()
        .into_iter()
        .filter(|e| e["topic"] == "audit")
        .collect();
    let text = serde_json::to_string(&audit).unwrap();
    assert!(
        !text.contains(&secret) && !text.contains("receiver-secret"),
        "{text}"
    );

    // w1 comes back: host.back.
    w1.restart(&m, "w1", &beat);
    wait_for(Duration::from_secs(20), || {
        all.events()
            .into_iter()
            .find(|e| e["kind"] == "host.back" && e["host"] == "w1")
    })
    .expect("host.back in the admin's stream");
    std::thread::sleep(Duration::from_secs(2));
    let scoped_events = scoped.events();
    assert!(
        scoped_events.iter().all(|e| e["host"] == "w2"),
        "a viewer scoped to w2 saw another host's events: {scoped_events:?}"
    );

    // Resuming: after the event before host.silent, the backlog replays it;
    // an id from before the daemon started is a gap.
    let (client, base) = api_client(&admin.context_dir());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let replay = rt.block_on(async {
        client
            .get(format!("{base}/v1/events?follow=false&topic=host"))
            .header("Last-Event-ID", (silent_id - 1).to_string())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(
        replay.contains(&format!("id: {silent_id}")),
        "resumed stream: {replay}"
    );
    let gap = rt.block_on(async {
        client
            .get(format!("{base}/v1/events?follow=false&after=1"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(gap.starts_with("event: gap"), "{gap}");
    // A topic the API does not know is a 400, not an empty stream.
    let status = rt.block_on(async {
        client
            .get(format!("{base}/v1/events?topic=hosts"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 400);

    // The history and the counts.
    let history: serde_json::Value =
        serde_json::from_str(&admin.ok(&["alert", "history", "--json"])).unwrap();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["kind"] == "host.silent" && d["outcome"] == "delivered"),
        "{history}"
    );
    let rules: serde_json::Value =
        serde_json::from_str(&admin.ok(&["alert", "list", "--json"])).unwrap();
    assert!(rules[0]["delivered"].as_u64().unwrap() >= 1, "{rules}");
    // The master counts it.
    let listed = admin.ok(&["alert", "list"]);
    assert!(!listed.contains("receiver-secret"), "{listed}");
    admin.ok(&["alert", "remove", "went-dark"]);
    assert!(admin.ok(&["alert", "list"]).contains("no alerts"));
    // Without a context the events are refused with a hint.
    let local = m.run(&["events"]);
    assert_eq!(local.status.code(), Some(2));
}
