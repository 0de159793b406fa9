//! Operators with identities of their own, end to end: the real `decnet`
//! CLI on "operator machines" (config dirs of their own, no access to the
//! master's home), logging in to a real `decnet master serve` and driving
//! its fleet API over mTLS. Played as the attacker too: a viewer trying an
//! admin's command, a scoped deployer reaching for a host outside its scope,
//! a revoked operator on its kept-alive connection, and the operator's key
//! looked for on the master. On SQLite, and with two masters on PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use decnet_e2e::{Agent, Daemon, MasterHome, bin};

/// An operator's machine: its own `$XDG_CONFIG_HOME` and `$HOME`, and a
/// `DECNET_HOME` that does not exist (nothing of the master's is here).
struct OperatorMachine {
    dir: tempfile::TempDir,
}

impl OperatorMachine {
    fn new() -> OperatorMachine {
        OperatorMachine {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("decnet"));
        cmd.args(args)
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("HOME", self.dir.path())
            .env("DECNET_HOME", self.dir.path().join("no-decnet-home"))
            .env_remove("DECNET_CONTEXT")
            .env_remove("DECNET_DATABASE_URL");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "operator: decnet {args:?} failed ({:?}):\n{}{}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn context_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("config/decnet/contexts").join(name)
    }

    fn login(&self, master: &Daemon, token: &str) -> String {
        self.ok(&[
            "login",
            "--master",
            &master.addr.to_string(),
            "--token",
            token,
        ])
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The token a `decnet operator add|token --json` printed.
fn token_of(out: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(out).unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}

/// A kept-alive mTLS client holding `ctx`'s operator identity.
fn kept_alive_client(ctx: &Path) -> reqwest::Client {
    let bundle = decnet_pki::Bundle::load(ctx, decnet_pki::BundleKind::Operator).unwrap();
    let cfg =
        decnet_pki::tls::client_config(&bundle, None, &decnet_pki::tls::ExpectedServer::master())
            .unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .pool_max_idle_per_host(4)
        .build()
        .unwrap()
}

/// Ask the fleet API (`renew_url`, `POST /v1/whoami/renew`) for a renewal
/// with `client`'s certificate and a key made here, and save the answer
/// and the key as an operator bundle in `dir` under the CA of context
/// `ctx`, as `decnet login --renew` keeps it before presenting it. Returns
/// the answer.
fn renew_into(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    renew_url: &str,
    dir: &Path,
    ctx: &Path,
) -> serde_json::Value {
    let (key_pem, csr_pem) = decnet_pki::ca::generate_csr("renewal").unwrap();
    let answer: serde_json::Value = rt.block_on(async {
        let r = client
            .post(renew_url)
            .json(&serde_json::json!({ "csr_pem": csr_pem }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    });
    let cert_pem = answer["cert_pem"].as_str().unwrap().to_string();
    decnet_pki::Bundle {
        kind: decnet_pki::BundleKind::Operator,
        identity: decnet_pki::PeerIdentity::from_pem(&cert_pem).unwrap(),
        cert_pem,
        key_pem,
        ca_pem: decnet_pki::Bundle::load(ctx, decnet_pki::BundleKind::Operator)
            .unwrap()
            .ca_pem,
    }
    .write(dir)
    .unwrap();
    answer
}

/// Whether `client`'s certificate is refused at `url`: a 403 on its
/// kept-alive connection, or a handshake refused as revoked (a connection
/// cut under the request, as the new revocation list closes it, is asked
/// again afresh).
fn refused(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &str,
) -> Result<(), String> {
    let ask = || {
        rt.block_on(async {
            match client.get(url).send().await {
                Ok(r) => Ok(r.status().as_u16()),
                Err(e) => Err(format!("{e:?}")),
            }
        })
    };
    let answer = match ask() {
        Err(e) if !e.contains("CertificateRevoked") => ask(),
        other => other,
    };
    match answer {
        Ok(403) => Ok(()),
        Ok(status) => Err(format!("answered {status}")),
        Err(e) if e.contains("CertificateRevoked") => Ok(()),
        Err(e) => Err(e),
    }
}

fn operators_drive_the_fleet(m: &MasterHome, masters: &[&Daemon]) {
    m.enroll("w1");
    m.enroll("lab1");
    let master = masters[0];

    // The bootstrap: the first admin, on the master host, without a context.
    let root = OperatorMachine::new();
    let t = m.ok(&["operator", "add", "root", "--role", "admin", "--json"]);
    let out = root.login(master, &token_of(&t));
    assert!(out.contains("context root saved"), "{out}");
    // The key was made on the operator's machine, 0600, and exists nowhere
    // on the master.
    let ctx = root.context_dir("root");
    let key = std::fs::read_to_string(ctx.join("operator.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(ctx.join("operator.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let key_body: String = key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(key_body.len() > 100);
    for (path, bytes) in files_under(m.dir.path()) {
        assert!(
            !text(&bytes).contains(&key_body[..64]),
            "the operator's key is on the master: {}",
            path.display()
        );
    }
    // Only operators reach the fleet API: a worker's valid certificate and
    // the master's own are refused before any handler.
    let api = std::fs::read_to_string(ctx.join("fleet-api")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (dir, kind) in [
        (m.agent_bundle_dir("w1"), decnet_pki::BundleKind::Agent),
        (m.updater_bundle_dir("w1"), decnet_pki::BundleKind::Updater),
        (m.master_bundle_dir(), decnet_pki::BundleKind::Master),
    ] {
        let client = decnet_e2e::mtls_client(&dir, kind, "decnet-master");
        let status = rt.block_on(async {
            client
                .get(format!("https://{}/v1/hosts", api.trim()))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        });
        assert_eq!(status, 403, "{kind:?} certificate at the fleet API");
    }

    // A token is spent once.
    let again = root.run(&[
        "login",
        "--master",
        &master.addr.to_string(),
        "--token",
        &token_of(&t),
    ]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("token already used"),
        "{}",
        text(&again.stderr)
    );

    // Same output through a context as on the master host.
    assert_eq!(
        root.json(&["swarm", "list", "--json"]),
        m.json(&["swarm", "list", "--json"])
    );
    assert_eq!(
        root.json(&["swarm", "show", "w1", "--json"]),
        m.json(&["swarm", "show", "w1", "--json"])
    );
    let table = root.ok(&["swarm", "list"]);
    assert!(table.contains("w1") && table.contains("lab1"), "{table}");

    // The admin adds a viewer and a deployer scoped to w*.
    let alice = OperatorMachine::new();
    alice.login(
        masters[masters.len() - 1],
        &token_of(&root.ok(&["operator", "add", "alice", "--role", "viewer", "--json"])),
    );
    let bob = OperatorMachine::new();
    bob.login(
        master,
        &token_of(&root.ok(&[
            "operator", "add", "bob", "--role", "deployer", "--hosts", "w*", "--json",
        ])),
    );

    // The viewer reads, and is refused an admin's command (exit 1, naming
    // the role it lacks).
    assert!(alice.ok(&["swarm", "show", "lab1"]).contains("lab1"));
    let out = alice.run(&["operator", "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("required role: admin"),
        "{}",
        text(&out.stderr)
    );
    let out = alice.run(&["operator", "add", "mallory", "--role", "admin"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    // The scoped deployer sees w1 and nothing of lab1.
    let hosts = bob.json(&["swarm", "list", "--json"]);
    let names: Vec<&str> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["w1"]);
    let out = bob.run(&["swarm", "show", "lab1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not enrolled"),
        "{}",
        text(&out.stderr)
    );
    // What needs the CA's key is said, not done on this machine's files.
    let out = bob.run(&["ca", "issue-monitor", "grafana"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("never leaves the master host"),
        "{}",
        text(&out.stderr)
    );

    // Probes of the workers run in the master (its warm pool), scoped too.
    let _agent = Agent::start(m, "w1", &m.dir.path().join("w1-state"), &[]);
    let reachable = |v: &serde_json::Value| -> Vec<(String, bool)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["host"].as_str().unwrap().to_string(),
                    r["reachable"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let remote = alice.run(&["swarm", "check", "--json"]);
    let local = m.run(&["swarm", "check", "--json"]);
    assert_eq!(
        remote.status.code(),
        local.status.code(),
        "lab1 has no agent"
    );
    let want = vec![("lab1".to_string(), false), ("w1".to_string(), true)];
    assert_eq!(
        reachable(&serde_json::from_slice(&remote.stdout).unwrap()),
        want
    );
    assert_eq!(
        reachable(&serde_json::from_slice(&local.stdout).unwrap()),
        want
    );
    let status = bob.json(&["swarm", "status", "--json"]);
    assert_eq!(reachable(&status), vec![("w1".to_string(), true)]);
    assert!(status[0]["status"]["deckies"].is_array(), "{status}");
    let out = bob.run(&["swarm", "status", "lab1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // The doctor and a host's releases, read through a context.
    let remote = alice.run(&["swarm", "doctor", "--no-probe", "--json"]);
    let local = m.run(&["swarm", "doctor", "--no-probe", "--json"]);
    assert_eq!(remote.status.code(), local.status.code());
    let (rv, lv): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&remote.stdout).unwrap(),
        serde_json::from_slice(&local.stdout).unwrap(),
    );
    assert_eq!(rv["verdict"], lv["verdict"], "{rv}\n{lv}");
    assert_eq!(rv["hosts_examined"], lv["hosts_examined"]);
    let scoped = bob.run(&["swarm", "doctor", "--no-probe", "--json"]);
    let sv: serde_json::Value = serde_json::from_slice(&scoped.stdout).unwrap();
    assert_eq!(sv["hosts_examined"], 1, "{sv}");
    assert!(
        sv["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["host"].as_str().is_some_and(|h| h.starts_with('w'))),
        "{sv}"
    );
    let remote = alice.run(&["swarm", "releases", "w1", "--json"]);
    let local = m.run(&["swarm", "releases", "w1", "--json"]);
    assert_eq!(remote.status.code(), local.status.code(), "no updater runs");
    let rv: serde_json::Value = serde_json::from_slice(&remote.stdout).unwrap();
    assert_eq!(rv["host"], "w1", "{rv}");
    assert!(rv["error"].is_string(), "{rv}");
    let out = bob.run(&["swarm", "releases", "lab1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // A deployer asks for renewals on its hosts only, and cannot make join
    // tokens (admin).
    let out = bob.ok(&["swarm", "renew", "w1"]);
    assert!(out.contains("will renew its certificate"), "{out}");
    let out = bob.run(&["swarm", "renew", "lab1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = bob.run(&[
        "swarm",
        "token",
        "create",
        "--host",
        "w7",
        "--address",
        "127.0.0.1",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("required role: admin"),
        "{}",
        text(&out.stderr)
    );
    // An admin enrols a new worker from afar: a join token, spent by the
    // worker's own join.
    let out = root.run(&[
        "swarm",
        "token",
        "create",
        "--host",
        "w7",
        "--address",
        "127.0.0.1",
        "--ttl",
        "10m",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    let w7 = m.dir.path().join("w7-bundle");
    let joined = Command::new(bin("decnet-agent"))
        .args([
            "join",
            "--master",
            &master.addr.to_string(),
            "--token",
            &token,
        ])
        .arg("--bundle-dir")
        .arg(&w7)
        .output()
        .unwrap();
    assert!(joined.status.success(), "{}", text(&joined.stderr));
    assert!(root.ok(&["swarm", "list"]).contains("w7"));

    // A deploy through a context is a job of the master daemon.
    let cfg = m.dir.path().join("deploy.json");
    std::fs::write(
        &cfg,
        r#"{"version":1,"deckies":[{"name":"web","command":["/bin/sleep","600"]}]}"#,
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let out = bob.run(&["swarm", "deploy", "--config", cfg, "--host", "w1"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("deploy accepted"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("done: 1/1 deckies running"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("started in the master"),
        "{}",
        text(&out.stderr)
    );
    let out = alice.run(&["swarm", "deploy", "--config", cfg, "--host", "w1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("required role: deployer"),
        "{}",
        text(&out.stderr)
    );
    let out = bob.run(&["swarm", "deploy", "--config", cfg, "--host", "lab1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // The job outlives the CLI, holds its hosts against a second job, can
    // be cancelled, and is followed to its end from anywhere.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    m.enroll("w9");
    m.set_agent_port("w9", hang.local_addr().unwrap().port());
    let mut child = bob
        .command(&[
            "swarm", "deploy", "--config", cfg, "--host", "w1", "--host", "w9",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    stderr.read_line(&mut line).unwrap();
    let id = line
        .strip_prefix("job ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id in {line:?}"))
        .to_string();
    child.kill().unwrap();
    child.wait().unwrap();
    let shown = bob.json(&["job", "show", &id, "--json"]);
    assert_eq!(shown["state"], "running", "{shown}");
    let out = root.run(&["swarm", "deploy", "--config", cfg, "--host", "w9"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("another job is changing w9"),
        "{}",
        text(&out.stderr)
    );
    bob.ok(&["job", "cancel", &id]);
    let out = bob.run(&["job", "follow", &id]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("done: 1/1 deckies running"),
        "{}",
        text(&out.stdout)
    );
    // w9 failed: cancelled, or its handshake timed out first (5 s).
    assert!(
        text(&out.stdout).contains("w9               FAILED: "),
        "{}",
        text(&out.stdout)
    );
    let shown = bob.json(&["job", "show", &id, "--json"]);
    assert!(
        shown["state"] == "cancelled" || shown["state"] == "failed",
        "{shown}"
    );
    assert_eq!(shown["hosts"][0]["host"], "w1", "{shown}");
    assert_eq!(shown["hosts"][0]["state"], "ok", "{shown}");
    assert_eq!(shown["hosts"][1]["state"], "failed", "{shown}");
    // A repeated request (same idempotency key) answers with the first job.
    let bob_ctx = bob.context_dir("bob");
    let api = std::fs::read_to_string(bob_ctx.join("fleet-api")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = kept_alive_client(&bob_ctx);
    let body = serde_json::json!({
        "config_json": std::fs::read_to_string(cfg).unwrap(),
        "config_name": "deploy.json", "hosts": ["w1"], "wait": true, "parallel": 4,
    });
    let ids: Vec<String> = (0..2)
        .map(|_| {
            rt.block_on(async {
                let r = client
                    .post(format!("https://{}/v1/deploy", api.trim()))
                    .header("idempotency-key", "retry-1")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let v: serde_json::Value = r.json().await.unwrap();
                v["id"].as_str().unwrap().to_string()
            })
        })
        .collect();
    assert_eq!(ids[0], ids[1], "a repeated request started a second job");
    let out = bob.run(&["job", "follow", &ids[0]]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    drop(hang);

    // The audit log credits each action to its operator.
    let audit = root.json(&["audit", "--json", "--actor", "root"]);
    let actions: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                format!(
                    "{} {}",
                    e["action"].as_str().unwrap(),
                    e["target"].as_str().unwrap()
                ),
            )
        })
        .collect();
    assert!(
        actions.contains(&("operator:root".into(), "operator.add alice".into()))
            && actions.contains(&("operator:root".into(), "operator.add bob".into())),
        "{actions:?}"
    );
    let local = m.json(&["audit", "--json"]);
    assert!(
        local
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "operator.add"
                && e["target"] == "root"
                && e["actor"].as_str().unwrap().starts_with("local:")),
        "{local}"
    );

    // A renewal before expiry: a new key made on bob's machine, no token;
    // the old certificate is refused from the next request on, on its
    // kept-alive connection too.
    let bob_ctx = bob.context_dir("bob");
    let api = std::fs::read_to_string(bob_ctx.join("fleet-api")).unwrap();
    let url = format!("https://{}/v1/whoami", api.trim());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let old_key = std::fs::read(bob_ctx.join("operator.key")).unwrap();
    let old_cert = std::fs::read(bob_ctx.join("operator.crt")).unwrap();
    let old_client = kept_alive_client(&bob_ctx);
    let status = rt.block_on(async { old_client.get(&url).send().await.unwrap().status() });
    assert_eq!(status, 200);
    // A renewal whose answer is lost on the way (made on the master, never
    // saved here) leaves bob the certificate it renewed with: it still
    // works, and renews again.
    // Kept aside as a thief who caught the answer would (not used yet: its
    // first request would make it bob's current certificate).
    let renew_url = format!("https://{}/v1/whoami/renew", api.trim());
    let lost_dir = tempfile::tempdir().unwrap();
    renew_into(&rt, &old_client, &renew_url, lost_dir.path(), &bob_ctx);
    let status = rt.block_on(async { old_client.get(&url).send().await.unwrap().status() });
    assert_eq!(status, 200, "a lost renewal answer locked the operator out");
    let out = bob.ok(&["login", "--renew"]);
    assert!(
        out.contains("renewed") && out.contains("context bob"),
        "{out}"
    );
    assert_ne!(
        std::fs::read(bob_ctx.join("operator.key")).unwrap(),
        old_key
    );
    assert_ne!(
        std::fs::read(bob_ctx.join("operator.crt")).unwrap(),
        old_cert
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(bob_ctx.join("operator.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Either the kept-alive connection is still open and the request on it
    // is refused, or the server closed it meanwhile (the new revocation
    // list closes the revoked peer's connections; an idle timeout under
    // load) and the next handshake is refused: both end the old certificate.
    let ask = || {
        rt.block_on(async {
            match old_client.get(&url).send().await {
                Ok(r) => Ok((r.status(), r.text().await.unwrap())),
                Err(e) => Err(format!("{e:?}")),
            }
        })
    };
    let answer = match ask() {
        Err(e) if !e.contains("CertificateRevoked") => {
            // The connection was cut under the request: ask again, afresh.
            ask()
        }
        other => other,
    };
    match answer {
        Ok((status, body)) => assert_eq!(
            status, 403,
            "the renewed-away certificate still works: {body}"
        ),
        Err(e) => assert!(
            e.contains("CertificateRevoked"),
            "the renewed-away certificate failed otherwise than revoked: {e}"
        ),
    }
    assert!(bob.ok(&["swarm", "list"]).contains("w1"));
    // The certificate of the lost answer was revoked by the renewal after
    // it: whoever caught it cannot use it.
    let thief = kept_alive_client(lost_dir.path());
    if let Err(e) = refused(&rt, &thief, &url) {
        panic!("the lost answer's certificate is not refused: {e}");
    }
    let revoked = m.json(&["audit", "--json", "--actor", "operator:bob"]);
    assert!(
        revoked
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "operator.renew.promote"),
        "{revoked}"
    );
    assert!(
        !bob_ctx.join("renewed").exists(),
        "a confirmed renewal left its waiting pair"
    );
    // A renewal never confirmed (the CLI stopped between the answer and its
    // first request with the new pair): the pair waits in the context's
    // `renewed/`, the old one stays in use, and the next `login --renew`
    // presents the waiting pair, which takes then (right after its issue,
    // within the same second often) without a new renewal.
    let renewed_once = kept_alive_client(&bob_ctx);
    let status = rt.block_on(async { renewed_once.get(&url).send().await.unwrap().status() });
    assert_eq!(status, 200);
    let waiting = renew_into(
        &rt,
        &renewed_once,
        &renew_url,
        &bob_ctx.join("renewed"),
        &bob_ctx,
    );
    let out = bob.ok(&["login", "--renew"]);
    assert!(out.contains("the renewal made earlier took"), "{out}");
    assert_eq!(
        decnet_pki::Bundle::load(&bob_ctx, decnet_pki::BundleKind::Operator)
            .unwrap()
            .identity
            .fingerprint
            .to_hex(),
        waiting["fingerprint"].as_str().unwrap()
    );
    assert!(!bob_ctx.join("renewed").exists());
    if let Err(e) = refused(&rt, &renewed_once, &url) {
        panic!("the certificate renewed away is not refused: {e}");
    }
    // Renewing in a loop (each renewal revokes a certificate, and the
    // revocations travel to every worker) is cut off: with the lost answer
    // and the waiting pair, three renewals were made within the hour.
    let out = bob.run(&["login", "--renew"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a fourth renewal within the hour"
    );
    assert!(
        text(&out.stderr).contains("within the hour"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        bob.ok(&["swarm", "list"]).contains("w1"),
        "a refused renewal keeps the certificate"
    );
    let renewed = m.json(&["audit", "--json", "--actor", "operator:bob"]);
    assert!(
        renewed
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "operator.renew" && e["target"] == "bob"),
        "{renewed}"
    );
    // The new key exists nowhere on the master.
    let new_key: String = std::fs::read_to_string(bob_ctx.join("operator.key"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(new_key.len() > 100);
    for (path, content) in files_under(m.dir.path()) {
        assert!(
            !text(&content).replace('\n', "").contains(&new_key[..64]),
            "bob's renewed key is on the master: {}",
            path.display()
        );
    }

    // Revocation holds from the next request, on a kept-alive connection too.
    let client = kept_alive_client(&bob_ctx);
    let status = rt.block_on(async { client.get(&url).send().await.unwrap().status() });
    assert_eq!(status, 200);
    root.ok(&["operator", "revoke", "bob"]);
    let (status, body) = rt.block_on(async {
        let r = client.get(&url).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    });
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("revoked"), "{body}");
    let out = bob.run(&["swarm", "list"]);
    assert_ne!(out.status.code(), Some(0), "a revoked operator still lists");
    let out = bob.run(&["login", "--renew"]);
    assert_ne!(out.status.code(), Some(0), "a revoked operator renewed");
    // And an admin sees it so.
    let ops = root.json(&["operator", "list", "--json"]);
    let bob_row = ops
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "bob")
        .unwrap();
    assert!(bob_row["revoked_at"].is_i64(), "{bob_row}");
    // An admin decommissions a host from afar (confirmed with --yes).
    let out = root.ok(&["swarm", "decommission", "lab1", "--yes"]);
    assert!(out.contains("decommissioned lab1"), "{out}");
    let lab1 = m.json(&["swarm", "show", "lab1", "--json"]);
    assert_eq!(lab1["status"], "decommissioned", "{lab1}");
    let audit = m.json(&["audit", "--json", "--actor", "operator:root"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "swarm.decommission"
                && e["target"] == "lab1"
                // From where: the operator's address.
                && e["source"] == "127.0.0.1"),
        "{audit}"
    );
    // A job's entries come from where its request came from; the master
    // host's own CLI has no address (its actor says local:USER).
    let all = m.json(&["audit", "--json", "--limit", "1000"]);
    let all = all.as_array().unwrap();
    assert!(
        all.iter()
            .any(|e| e["action"] == "swarm.deploy" && e["source"] == "127.0.0.1"),
        "{all:?}"
    );
    assert!(
        all.iter()
            .filter(|e| e["actor"].as_str().unwrap().starts_with("local:"))
            .all(|e| e["source"].is_null()),
        "{all:?}"
    );

    // A role change holds from the next command: alice becomes an admin.
    root.ok(&["operator", "set-role", "alice", "admin"]);
    assert!(alice.ok(&["operator", "list"]).contains("bob"));

    // An admin limited to some hosts cannot manage operators: it could lift
    // its own scope, add an unscoped admin, or take another over with a
    // fresh token.
    let carol = OperatorMachine::new();
    let carol_token = token_of(&root.ok(&[
        "operator", "add", "carol", "--role", "admin", "--hosts", "w*", "--json",
    ]));
    let addr = master.addr.to_string();
    let login = |extra: &[&str]| {
        let mut args = vec!["login", "--master", &addr, "--token", &carol_token];
        args.extend_from_slice(extra);
        carol.run(&args)
    };
    let out = login(&["--as", "one", "--context", "two"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // `login --context NAME` names the context it saves.
    let out = login(&["--context", "lab-admin"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(carol.context_dir("lab-admin").join("operator.key").exists());
    assert!(carol.ok(&["swarm", "list"]).contains("w1"));
    for attempt in [
        vec!["operator", "list"],
        vec!["operator", "set-role", "carol", "admin", "--hosts", "*"],
        vec!["operator", "add", "carol2", "--role", "admin"],
        vec!["operator", "token", "root"],
    ] {
        let out = carol.run(&attempt);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{attempt:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("without a host scope"),
            "{attempt:?}: {}",
            text(&out.stderr)
        );
    }
    let refused = m.json(&["audit", "--json", "--actor", "operator:carol"]);
    assert!(
        refused
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "fleet_api.refused")
            .count()
            >= 3,
        "{refused}"
    );

    // A login never silently replaces a context of the same name.
    let t = root.ok(&["operator", "token", "alice", "--json"]);
    let out = alice.run(&[
        "login",
        "--master",
        &master.addr.to_string(),
        "--token",
        &token_of(&t),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("exists already"),
        "{}",
        text(&out.stderr)
    );
    let t = root.ok(&["operator", "token", "alice", "--json"]);
    alice.ok(&[
        "login",
        "--master",
        &master.addr.to_string(),
        "--token",
        &token_of(&t),
        "--force",
    ]);
    assert!(alice.ok(&["swarm", "list"]).contains("w1"));

    // The OpenAPI document lists the routes the API really serves: each,
    // called with names that do not exist, is answered by its handler
    // (never the router's "no such route", never a wrong method).
    let root_ctx = root.context_dir("root");
    let api = std::fs::read_to_string(root_ctx.join("fleet-api")).unwrap();
    let base = format!("https://{}", api.trim());
    let client = kept_alive_client(&root_ctx);
    let doc: serde_json::Value = rt.block_on(async {
        client
            .get(format!("{base}/v1/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert!(doc["openapi"].as_str().unwrap().starts_with('3'), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 25, "{}", paths.len());
    for (path, item) in paths {
        let concrete: String = path
            .split('/')
            .map(|s| if s.starts_with('{') { "no-such-x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, body) = rt.block_on(async {
                let r = client
                    .request(m, format!("{base}{concrete}"))
                    .send()
                    .await
                    .unwrap();
                // The event stream follows until the client leaves: its
                // head is the answer.
                if path == "/v1/events" {
                    return (r.status(), String::new());
                }
                (r.status(), r.text().await.unwrap())
            });
            assert!(
                status != 405 && !body.contains("no such route"),
                "{method} {path}: {status} {body}"
            );
        }
    }

    // The job list is a summary: no job's request or result (which a
    // hostile worker can make large) comes with it.
    let jobs: serde_json::Value = rt.block_on(async {
        client
            .get(format!("{base}/v1/jobs"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let jobs = jobs.as_array().unwrap();
    assert!(!jobs.is_empty());
    assert!(
        jobs.iter()
            .all(|j| j["result"].is_null() && j["request"] == ""),
        "{jobs:?}"
    );
    // An idempotency key names one request: replayed on another, refused.
    let keyed = |path: &str| {
        rt.block_on(async {
            let r = client
                .post(format!("{base}{path}"))
                .header("idempotency-key", "replayed-key")
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let first = keyed("/v1/hosts/w1/teardown");
    assert_ne!(first.0, 409, "{first:?}");
    let other = keyed("/v1/hosts/w1/rollback");
    assert_eq!(other.0, 409, "{other:?}");
    assert!(other.1.contains("another request"), "{other:?}");

    // A deployer cannot fill the master's disk with release uploads: a
    // digest that does not match keeps nothing, and past MAX_UPLOADS the
    // oldest upload no running job pushes makes room.
    let put = |body: Vec<u8>, sha: &str| {
        rt.block_on(async {
            let r = client
                .put(format!("{base}/v1/releases/{sha}"))
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let wrong = put(b"not what the digest says".to_vec(), &"0".repeat(64));
    assert_eq!(wrong.0, 400, "{wrong:?}");
    let mut statuses = Vec::new();
    for i in 0..10 {
        let blob = format!("upload {i}").into_bytes();
        let sha = decnet_pki::signing::sha256_hex(&blob);
        statuses.push(put(blob, &sha));
    }
    assert!(statuses.iter().all(|(s, _)| *s == 201), "{statuses:?}");
    let held: Vec<String> = std::fs::read_dir(m.home().join("uploads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(held.len(), 8, "at most 8 uploads held: {held:?}");
    // The oldest made room for the newest.
    let first = decnet_pki::signing::sha256_hex(b"upload 0");
    let last = decnet_pki::signing::sha256_hex(b"upload 9");
    assert!(!held.contains(&format!("{first}.tar.gz")), "{held:?}");
    assert!(held.contains(&format!("{last}.tar.gz")), "{held:?}");
}

#[test]
fn operators_drive_the_fleet_through_contexts_on_sqlite() {
    let m = MasterHome::new();
    let master = m.serve(&["--no-listener"]);
    operators_drive_the_fleet(&m, &[&master]);
}

/// Two masters on one PostgreSQL serve operators alike: alice logs in
/// through the second, everyone else through the first.
#[test]
fn two_masters_on_postgresql_serve_operators_alike() {
    let Some(db) = decnet_e2e::postgres::fresh_database("decnet_ops") else {
        return;
    };
    let m = MasterHome::with_database(Some(db));
    let a = m.serve(&["--no-listener"]);
    let b = m.serve(&["--no-listener"]);
    operators_drive_the_fleet(&m, &[&a, &b]);
}
