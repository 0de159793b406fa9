//! The scale-out path: two `decnet master serve` processes on one
//! PostgreSQL share the fleet. Everything that matters lives in the
//! database: a token created once is spent once whichever master sees it,
//! the join rate limit holds across both, and heartbeats to either master
//! keep the host alive (the other may be gone). The CA (files) is shared
//! too: both read the same home, as two masters on one host, or a copy.

use std::time::Duration;

use decnet_e2e::{Agent, MasterHome, join_with_token, mtls_client, wait_for};

fn fresh_database() -> Option<String> {
    decnet_e2e::postgres::fresh_database("decnet_two")
}

#[test]
fn two_masters_on_one_postgresql_share_the_fleet() {
    let Some(db) = fresh_database() else {
        return;
    };
    let m = MasterHome::with_database(Some(db.clone()));
    let pg = |args: &[&str]| -> String { m.ok(args) };
    pg(&["swarm", "enroll", "--host", "w1", "--address", "127.0.0.1"]);
    let a = m.serve(&["--no-listener"]);
    let mut b = m.serve(&["--no-listener"]);

    // A token created once is spent once, whichever master takes it.
    let token = pg(&[
        "swarm",
        "token",
        "create",
        "--host",
        "w2",
        "--address",
        "127.0.0.1",
    ])
    .trim()
    .to_string();
    let joined = m.dir.path().join("w2-b");
    let out = join_with_token("decnet-agent", &b, &token, &joined);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = join_with_token("decnet-agent", &a, &token, &m.dir.path().join("w2-a"));
    assert!(
        !again.status.success(),
        "a spent token joined again through the other master"
    );
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("used") || err.contains("refused"), "{err}");

    // The join rate limit holds across both: 30 + 30 allowed, then refused
    // at either (each process alone has seen only about half).
    let client = mtls_client(
        &m.agent_bundle_dir("w1"),
        decnet_pki::BundleKind::Agent,
        "decnet-master",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let get = |addr: std::net::SocketAddr| -> u16 {
        rt.block_on(async {
            client
                .get(format!("https://{addr}/join/ca"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    };
    // (The joins above already counted two attempts each: CA download + join.)
    let mut allowed = 4;
    for i in 0..200 {
        let s = get(if i % 2 == 0 { a.addr } else { b.addr });
        if s == 429 {
            break;
        }
        assert_eq!(s, 200);
        allowed += 1;
    }
    assert!(
        (60..=62).contains(&allowed),
        "the shared limit is 60 per minute per source; allowed {allowed}"
    );
    assert_eq!(get(a.addr), 429);
    assert_eq!(get(b.addr), 429);

    // Heartbeats to one master, then to the other with the first gone.
    let state = m.dir.path().join("w1-state");
    let extra_a = ["--master", &a.addr.to_string(), "--heartbeat-interval", "1"];
    let mut agent = Agent::start(&m, "w1", &state, &extra_a);
    let show = |m: &MasterHome| -> serde_json::Value { m.json(&["swarm", "show", "w1", "--json"]) };
    let seen = wait_for(Duration::from_secs(30), || {
        let v = show(&m);
        (v["status"] == "active").then(|| v["last_seen"].as_i64().unwrap_or(0))
    })
    .expect("heartbeats through master A reach the shared database");
    drop(a);
    let extra_b = ["--master", &b.addr.to_string(), "--heartbeat-interval", "1"];
    agent.restart(&m, "w1", &extra_b);
    let later = wait_for(Duration::from_secs(30), || {
        let v = show(&m);
        let t = v["last_seen"].as_i64().unwrap_or(0);
        (v["status"] == "active" && t > seen + 1).then_some(t)
    });
    assert!(
        later.is_some(),
        "heartbeats through master B keep the host alive; B's log:\n{}",
        b.log_text()
    );
    b.stop();
}
