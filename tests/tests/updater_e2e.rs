//! The real `decnet-updater` installing real `decnet-agent` releases, driven
//! by the real `decnet swarm update|rollback|releases`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use decnet_e2e::{MasterHome, UpdaterFixture, broken_release, good_release, mtls_client, wait_for};
use decnet_pki::BundleKind;

fn releases(m: &MasterHome, host: &str) -> Vec<serde_json::Value> {
    m.json(&["swarm", "releases", host, "--json"])["releases"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn labels(m: &MasterHome, host: &str) -> Vec<String> {
    releases(m, host)
        .iter()
        .map(|r| r["sha"].as_str().unwrap().to_string())
        .collect()
}

fn agent_healthy(m: &MasterHome) -> bool {
    m.run(&["swarm", "check"]).status.success()
}

/// `decnet release pack DIR` into `name` in the home: (tarball, its
/// manifests, its SHA-256 hex).
fn packed(
    m: &MasterHome,
    dir: &Path,
    name: &str,
) -> (PathBuf, Vec<decnet_pki::signing::SignedManifest>, String) {
    let tar = m.dir.path().join(name);
    m.ok(&[
        "release",
        "pack",
        dir.to_str().unwrap(),
        "--out",
        tar.to_str().unwrap(),
    ]);
    let manifests = serde_json::from_slice(
        &std::fs::read(m.dir.path().join(format!("{name}.manifests.json"))).unwrap(),
    )
    .unwrap();
    let digest = sha256_hex(&std::fs::read(&tar).unwrap());
    (tar, manifests, digest)
}

/// A client of `host`'s updater as the master's (pinned to its recorded
/// fingerprint), for calls the CLI does not make as such.
fn direct_client(
    m: &MasterHome,
    host: &str,
    u: &UpdaterFixture,
) -> decnet_swarm_client::UpdaterClient {
    let pin = m.json(&["swarm", "show", host, "--json"])["updater_fingerprint"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let master = decnet_pki::Bundle::load(&m.master_bundle_dir(), BundleKind::Master).unwrap();
    decnet_swarm_client::UpdaterClient::new(host, &master, "127.0.0.1", u.daemon.port(), vec![pin])
        .unwrap()
}

#[test]
fn good_release_goes_live_bad_one_is_reverted_and_rollback_restores_code() {
    let m = MasterHome::new();
    m.enroll("u1");
    let u = UpdaterFixture::start(&m, "u1", &[]);
    let rel = m.dir.path().join("rel");
    let v1 = good_release(&rel.join("v1"), false);
    let v2 = good_release(&rel.join("v2"), false);
    let bad = broken_release(&rel.join("bad"));

    let out = m.ok(&[
        "swarm",
        "update",
        "--release",
        v1.to_str().unwrap(),
        "--host",
        "u1",
    ]);
    assert!(out.contains("UPDATED"), "{out}");
    assert!(agent_healthy(&m), "agent answers after the first install");
    let pid1 = u.agent_pid().expect("agent running");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(u.install.join("agent.spawn.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the agent's output is its operator's only"
        );
    }
    // A host enrolled without an updater certificate is skipped up front,
    // named, and does not stop the others.
    m.ok(&[
        "swarm",
        "enroll",
        "--host",
        "a-no-updater",
        "--address",
        "127.0.0.1",
    ]);
    let out = m.run(&[
        "swarm",
        "update",
        "--release",
        v2.to_str().unwrap(),
        "--all",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "not every host updated: {text}");
    assert!(
        text.contains("skipping 1 host(s) without an updater certificate: a-no-updater"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("u1") && l.contains("updated")),
        "{text}"
    );
    assert_eq!(
        labels(&m, "u1"),
        vec!["v2", "v1"],
        "active first, previous next"
    );
    m.ok(&["swarm", "decommission", "a-no-updater", "--yes"]);
    let pid2 = u.agent_pid().unwrap();
    assert_ne!(pid1, pid2, "the agent was restarted into the new release");
    let exe = std::fs::read_link(format!("/proc/{pid2}/exe")).unwrap();
    assert!(
        exe.to_string_lossy().contains("-v2/bin/decnet-agent"),
        "{}",
        exe.display()
    );

    // A release whose agent never becomes healthy is reverted automatically.
    let out = m.run(&[
        "swarm",
        "update",
        "--release",
        bad.to_str().unwrap(),
        "--host",
        "u1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rolled_back"), "{text}");
    // Why, as the updater saw it: the probe and the failed agent's output.
    assert!(text.contains("u1: the probe of the new release"), "{text}");
    assert!(
        text.contains("u1: the failed agent's last output"),
        "{text}"
    );
    assert!(text.contains("broken agent: cannot start"), "{text}");
    let out = m.run(&[
        "swarm",
        "update",
        "--release",
        bad.to_str().unwrap(),
        "--host",
        "u1",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v[0]["failure"]["agent_output"]
            .as_str()
            .unwrap()
            .contains("broken agent: cannot start"),
        "{v}"
    );
    assert!(
        !v[0]["failure"]["probe"].as_array().unwrap().is_empty(),
        "{v}"
    );
    assert_eq!(
        labels(&m, "u1"),
        vec!["v2", "v1"],
        "the failed release is gone"
    );
    assert!(agent_healthy(&m), "the old agent answers again");

    // The 409 answer carries this attempt's agent output only — not earlier
    // runs' — and no terminal escape codes.
    let (bad_tar, manifests, digest) = packed(&m, &bad, "bad.tar.gz");
    let client = direct_client(&m, "u1", &u);
    let outcome = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(client.update(&decnet_swarm_client::updater::ReleaseUpload {
            tarball: &bad_tar,
            sha: "bad",
            sha256: &digest,
            manifests: &manifests,
            allow_downgrade: false,
        }));
    let Ok(decnet_swarm_client::updater::UpdateOutcome::RolledBack(body)) = outcome else {
        panic!("expected a rollback, got {outcome:?}");
    };
    let stderr = body["stderr"].as_str().unwrap();
    assert!(stderr.contains("broken agent: cannot start"), "{stderr}");
    assert!(
        !stderr.contains("listening on"),
        "earlier runs leaked in: {stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
    assert_eq!(body["rolled_back"], true);
    // An agent that exited is not probed until the attempts run out (12
    // here): the revert starts once it is seen gone.
    let transcript: Vec<&str> = body["probe"]["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert!(
        transcript.iter().any(|l| l.contains("the agent exited")),
        "{transcript:?}"
    );
    // The updater holds the agent's socket across restarts, so connecting
    // to a dead agent succeeds and nobody answers: the attempt in flight
    // ends when the agent is seen gone, not when its timeout runs out.
    assert!(
        !transcript.iter().any(|l| l.contains("timed out")),
        "{transcript:?}"
    );
    assert!(
        transcript
            .iter()
            .filter(|l| l.starts_with("attempt"))
            .count()
            < 12,
        "{transcript:?}"
    );
    let pid3 = u.agent_pid().unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid3}/exe")).unwrap();
    assert!(
        exe.to_string_lossy().contains("-v2/bin/decnet-agent"),
        "{}",
        exe.display()
    );

    // Manual rollback: the previous release's code runs for real.
    m.ok(&["swarm", "rollback", "u1"]);
    assert_eq!(labels(&m, "u1")[0], "v1");
    assert!(agent_healthy(&m));
    let pid4 = u.agent_pid().unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid4}/exe")).unwrap();
    assert!(
        exe.to_string_lossy().contains("-v1/bin/decnet-agent"),
        "{}",
        exe.display()
    );

    let history = m.json(&["swarm", "releases", "u1", "--json"])["history"].clone();
    let outcomes: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.contains(&"rolled_back") && outcomes.contains(&"updated"),
        "{outcomes:?}"
    );
    let audit = m.json(&["audit", "--json"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "swarm.rollback" && e["outcome"] == "ok")
    );
}

#[test]
fn first_install_failing_its_probe_leaves_no_dangling_current() {
    let m = MasterHome::new();
    m.enroll("u2");
    let u = UpdaterFixture::start(&m, "u2", &[]);
    let bad = broken_release(&m.dir.path().join("bad"));
    let out = m.run(&[
        "swarm",
        "update",
        "--release",
        bad.to_str().unwrap(),
        "--host",
        "u2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    // A failure, not a rollback: there was nothing to go back to.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAILED") && !text.contains("ROLLED_BACK"),
        "{text}"
    );
    assert!(text.contains("nothing is installed"), "{text}");
    let history = m.json(&["swarm", "releases", "u2", "--json"])["history"].clone();
    assert_eq!(history[0]["outcome"], "failed", "{history}");
    assert!(
        std::fs::symlink_metadata(u.install.join("current")).is_err(),
        "no current symlink"
    );
    assert!(releases(&m, "u2").is_empty());
    let out = m.run(&["swarm", "rollback", "u2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no previous release"));
}

fn tarball(entries: &[(&str, tar::EntryType, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, kind, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        if *kind == tar::EntryType::Symlink {
            h.set_link_name("../../../../etc/passwd").unwrap();
        }
        let name = path.as_bytes();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn sha256_hex(b: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, b).unwrap();
    decnet_pki::signing::digest_hex(&decnet_pki::signing::sha256_file(&p).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn malicious_or_unverified_uploads_are_refused_and_the_agent_keeps_running() {
    let m = MasterHome::new();
    m.enroll("u3");
    let key = m.dir.path().join("release.key");
    m.ok(&["release", "keygen", "--out", key.to_str().unwrap()]);
    let pubkey = m.dir.path().join("release.key.pub");
    let u = UpdaterFixture::start(&m, "u3", &[]);
    let v1 = good_release(&m.dir.path().join("v1"), false);
    // Unsigned releases are accepted by this updater (no --release-pubkey yet).
    m.ok(&[
        "swarm",
        "update",
        "--release",
        v1.to_str().unwrap(),
        "--host",
        "u3",
    ]);
    let pid = u.agent_pid().unwrap();

    let master = decnet_pki::Bundle::load(&m.master_bundle_dir(), BundleKind::Master).unwrap();
    let show = m.json(&["swarm", "show", "u3", "--json"]);
    let pin: decnet_pki::Fingerprint = show["updater_fingerprint"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let client = decnet_swarm_client::UpdaterClient::new(
        "u3",
        &master,
        "127.0.0.1",
        u.daemon.port(),
        vec![pin],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let push = |name: &str, bytes: Vec<u8>, sha256: Option<String>| {
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        let digest = sha256.unwrap_or_else(|| sha256_hex(&bytes));
        let client = client.clone();
        async move {
            let up = decnet_swarm_client::updater::ReleaseUpload {
                tarball: &p,
                sha: "evil",
                sha256: &digest,
                manifests: &[],
                allow_downgrade: false,
            };
            client.update(&up).await
        }
    };
    let agent_script: &[u8] = b"#!/bin/sh\necho hi\n";
    let cases: Vec<(&str, Vec<u8>, Option<String>, &str)> = vec![
        (
            "traversal",
            tarball(&[("../../escape", tar::EntryType::Regular, b"x", 0o644)]),
            None,
            "not allowed",
        ),
        (
            "absolute",
            tarball(&[("/tmp/decnet-abs-evil", tar::EntryType::Regular, b"x", 0o644)]),
            None,
            "not allowed",
        ),
        (
            "symlink",
            tarball(&[("bin/decnet-agent", tar::EntryType::Symlink, b"", 0o777)]),
            None,
            "symlink",
        ),
        (
            "device",
            tarball(&[("bin/null", tar::EntryType::Char, b"", 0o644)]),
            None,
            "device",
        ),
        ("bomb", tar_bomb(), None, "too large"),
        (
            "wrong-digest",
            tarball(&[(
                "bin/decnet-agent",
                tar::EntryType::Regular,
                agent_script,
                0o755,
            )]),
            Some("0".repeat(64)),
            "mismatch",
        ),
        (
            "bad-digest",
            tarball(&[(
                "bin/decnet-agent",
                tar::EntryType::Regular,
                agent_script,
                0o755,
            )]),
            Some("xyz".into()),
            "64-hex",
        ),
        (
            "no-agent",
            tarball(&[("bin/other", tar::EntryType::Regular, agent_script, 0o755)]),
            None,
            "preflight",
        ),
    ];
    for (name, bytes, digest, want) in cases {
        let err = push(name, bytes, digest).await.expect_err(name);
        let text = err.to_string();
        assert!(text.contains("400"), "{name}: {text}");
        assert!(text.contains(want), "{name}: expected {want:?} in {text}");
        assert_eq!(
            u.agent_pid(),
            Some(pid),
            "{name}: the running agent was touched"
        );
    }
    assert!(!Path::new("/tmp/decnet-abs-evil").exists());
    assert!(!u.install.parent().unwrap().join("escape").exists());
    assert_eq!(labels(&m, "u3"), vec!["v1"]);
    // Without a keyring each upload was extracted while it streamed in, and
    // nothing a refused one extracted is left behind.
    assert!(
        u.daemon
            .log_text()
            .contains("extracted_while_receiving=true"),
        "{}",
        u.daemon.log_text()
    );
    assert_eq!(unfinished(&u.install), Vec::<String>::new());

    // Now require signatures.
    drop(client);
    let mut u = u;
    let pk = pubkey.to_str().unwrap().to_string();
    u.daemon.stop();
    restart_with_pubkey(&m, &mut u, &pk);
    let v2 = good_release(&m.dir.path().join("v2"), false);
    let out = m.run(&[
        "swarm",
        "update",
        "--release",
        v2.to_str().unwrap(),
        "--host",
        "u3",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("requires signed releases"));
    let other = m.dir.path().join("other.key");
    m.ok(&["release", "keygen", "--out", other.to_str().unwrap()]);
    let out = m.run(&[
        "swarm",
        "update",
        "--release",
        v2.to_str().unwrap(),
        "--host",
        "u3",
        "--sign",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("does not verify"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(labels(&m, "u3"), vec!["v1"]);
    let before = streamed(&u, "true");
    m.ok(&[
        "swarm",
        "update",
        "--release",
        v2.to_str().unwrap(),
        "--host",
        "u3",
        "--sign",
        key.to_str().unwrap(),
        "--release-version",
        "2.0.0",
    ]);
    assert_eq!(labels(&m, "u3")[0], "v2");
    // The client sends the signed manifest first: the updater checked it,
    // then extracted the tarball while it arrived.
    assert_eq!(streamed(&u, "true"), before + 1, "{}", u.daemon.log_text());

    // A downgrade, even signed, is refused: with a keyring the master's
    // --allow-downgrade does not count, only a permit signed into the
    // manifest does.
    let update_v1 = |extra: &[&str]| {
        let mut args = vec![
            "swarm",
            "update",
            "--release",
            v1.to_str().unwrap(),
            "--host",
            "u3",
            "--sign",
            key.to_str().unwrap(),
            "--release-version",
            "1.0.0",
        ];
        args.extend_from_slice(extra);
        m.run(&args)
    };
    let stdout = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let out = update_v1(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("below this updater's floor 2.0.0"),
        "{}",
        stdout(&out)
    );
    let out = update_v1(&["--allow-downgrade"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("does not count"),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(labels(&m, "u3")[0], "v2");
    let out = update_v1(&["--permit-downgrade"]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(labels(&m, "u3")[0], "v1");
    // The permit lowered nothing: the floor is still 2.0.0, also after a
    // restart of the updater.
    u.daemon.stop();
    restart_with_pubkey(&m, &mut u, &pk);
    let out = update_v1(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    // Pre-releases order before their release.
    let rc = good_release(&m.dir.path().join("v2rc"), false);
    let out = m.run(&[
        "swarm",
        "update",
        "--release",
        rc.to_str().unwrap(),
        "--host",
        "u3",
        "--sign",
        key.to_str().unwrap(),
        "--release-version",
        "2.0.0-rc.1",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    // A release without a version (a commit-hash label) is ordered by its
    // signing time: signed now, it is the newest.
    let hash = good_release(&m.dir.path().join("4f2a9c1"), false);
    m.ok(&[
        "swarm",
        "update",
        "--release",
        hash.to_str().unwrap(),
        "--host",
        "u3",
        "--sign",
        key.to_str().unwrap(),
    ]);
    assert_eq!(labels(&m, "u3")[0], "4f2a9c1");
    // A manifest signed in the future is refused (a clock trick to stay
    // above every later floor).
    let future = good_release(&m.dir.path().join("future"), false);
    let (fut_tar, _, fut_digest) = packed(&m, &future, "future.tar.gz");
    let signer = decnet_pki::signing::ReleaseSigner::load(&key).unwrap();
    let signed = signer.sign_manifest(&decnet_pki::signing::ReleaseManifest {
        target: decnet_pki::signing::ReleaseTarget::Agent,
        label: "future".into(),
        version: String::new(),
        sha256: fut_digest.clone(),
        signed_at: time::OffsetDateTime::now_utc().unix_timestamp() + 86_400,
        permit_downgrade: false,
    });
    let bytes = std::fs::read(&fut_tar).unwrap();
    let form = reqwest::multipart::Form::new()
        .part(
            "tarball",
            reqwest::multipart::Part::bytes(bytes).file_name("r.tar.gz"),
        )
        .text("sha", "future")
        .text("sha256", fut_digest)
        .text("manifest", signed.manifest.clone())
        .text("signature", signed.signature.clone().unwrap());
    let (status, v) = post_update(&m, &u, form).await;
    assert_eq!(status, 400);
    assert!(
        v["detail"].as_str().unwrap().contains("in the future"),
        "{v}"
    );
    assert_eq!(labels(&m, "u3")[0], "4f2a9c1", "nothing was installed");

    // A release signed for the updater is refused as an agent release: the
    // signature binds the target, so a replay to another route fails.
    let v3 = good_release(&m.dir.path().join("v3"), true);
    let tarball = m.dir.path().join("v3.tar.gz");
    m.ok(&[
        "release",
        "pack",
        v3.to_str().unwrap(),
        "--out",
        tarball.to_str().unwrap(),
        "--sign",
        key.to_str().unwrap(),
    ]);
    let manifests: Vec<decnet_pki::signing::SignedManifest> = serde_json::from_slice(
        &std::fs::read(m.dir.path().join("v3.tar.gz.manifests.json")).unwrap(),
    )
    .unwrap();
    let for_updater = manifests
        .iter()
        .find(|x| x.parse().unwrap().target == decnet_pki::signing::ReleaseTarget::Updater)
        .unwrap();
    let bytes = std::fs::read(&tarball).unwrap();
    let form = reqwest::multipart::Form::new()
        .part(
            "tarball",
            reqwest::multipart::Part::bytes(bytes.clone()).file_name("r.tar.gz"),
        )
        .text("sha", "v3")
        .text("sha256", sha256_hex(&bytes))
        .text("manifest", for_updater.manifest.clone())
        .text("signature", for_updater.signature.clone().unwrap());
    let (status, v) = post_update(&m, &u, form).await;
    assert_eq!(status, 400);
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("signed for the updater"),
        "{v}"
    );
    assert_eq!(labels(&m, "u3")[0], "4f2a9c1", "nothing was installed");

    // The attacker (a master without the release key) sends a signed
    // manifest first, then a tar bomb to the agent's route. One signed for
    // the updater, or for another label, does not open the tar parser to
    // that tarball: it is spooled, then refused before extraction. One that
    // passes all but the digest (signed, for the agent, for this label, at
    // the floor) is extracted early (the digest is only known at the end),
    // but within one release's cap, then refused; nothing is left.
    let bomb = tar_bomb();
    let replayed = signer.sign_manifest(&decnet_pki::signing::ReleaseManifest {
        target: decnet_pki::signing::ReleaseTarget::Agent,
        label: "v2".into(),
        version: "2.0.0".into(),
        sha256: sha256_hex(b"another tarball"),
        signed_at: time::OffsetDateTime::now_utc().unix_timestamp(),
        permit_downgrade: false,
    });
    for (manifest, label, how, refusal) in [
        (for_updater, "v3", "false", "signed for the updater"),
        (&replayed, "other", "false", "names another tarball"),
        (&replayed, "v2", "true", "names another tarball"),
    ] {
        let before = streamed(&u, how);
        let form = reqwest::multipart::Form::new()
            .text("sha", label)
            .text("sha256", sha256_hex(&bomb))
            .text("manifest", manifest.manifest.clone())
            .text("signature", manifest.signature.clone().unwrap())
            .part(
                "tarball",
                reqwest::multipart::Part::bytes(bomb.clone()).file_name("r.tar.gz"),
            );
        let (status, v) = post_update(&m, &u, form).await;
        assert_eq!(status, 400, "{label}");
        assert!(
            v["detail"].as_str().unwrap().contains(refusal),
            "{label}: {v}"
        );
        assert_eq!(
            streamed(&u, how),
            before + 1,
            "{label}: {}",
            u.daemon.log_text()
        );
        assert_eq!(labels(&m, "u3")[0], "4f2a9c1", "nothing was installed");
        assert_eq!(unfinished(&u.install), Vec::<String>::new());
    }
}

/// How many uploads `u` logged as extracted while received (`how` =
/// `"true"`) or spooled first (`"false"`).
fn streamed(u: &UpdaterFixture, how: &str) -> usize {
    u.daemon
        .log_text()
        .matches(&format!("extracted_while_receiving={how}"))
        .count()
}

/// `POST /update` of a hand-made `form` to `u` (host `u3`) under the master's
/// certificate (field order and contents the client would not send): the
/// status and the JSON answer.
async fn post_update(
    m: &MasterHome,
    u: &UpdaterFixture,
    form: reqwest::multipart::Form,
) -> (reqwest::StatusCode, serde_json::Value) {
    let r = mtls_client(&m.master_bundle_dir(), BundleKind::Master, "updater@u3")
        .post(format!("https://{}/update", u.daemon.addr))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

/// A release tarball of 300 MiB of zeros (a few hundred KiB compressed).
fn tar_bomb() -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut h = tar::Header::new_gnu();
    h.set_size(300 << 20);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "bin/huge", std::io::repeat(0).take_bytes(300 << 20))
        .unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

/// What is half done in an install's release tree (staging dirs and
/// uploads being extracted) once the background removals are through
/// (waits up to 10 s for it to be empty).
fn unfinished(install: &Path) -> Vec<String> {
    let list = || -> Vec<String> {
        std::fs::read_dir(install.join("releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    };
    for _ in 0..200 {
        if list().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    list()
}

trait TakeBytes: std::io::Read + Sized {
    fn take_bytes(self, n: u64) -> std::io::Take<Self> {
        std::io::Read::take(self, n)
    }
}
impl TakeBytes for std::io::Repeat {}

fn restart_with_pubkey(m: &MasterHome, u: &mut UpdaterFixture, pubkey: &str) {
    // The fixture has no flag for this; start the updater by hand on the same tree.
    let mut cmd = std::process::Command::new(decnet_e2e::bin("decnet-updater"));
    cmd.args([
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--agent-control",
        "spawn",
    ])
    .arg("--bundle-dir")
    .arg(m.updater_bundle_dir("u3"))
    .arg("--agent-bundle-dir")
    .arg(m.agent_bundle_dir("u3"))
    .arg("--install-dir")
    .arg(&u.install)
    .args(["--agent-port", &u.agent_port.to_string()])
    .args(["--agent-host", "127.0.0.1"])
    .arg(format!(
        "--agent-arg=--state-dir={}",
        u.agent_state.display()
    ))
    // A good release's agent gets 10 s to answer its probe: on a loaded
    // machine (the whole suite in parallel) a debug agent can take longer
    // than the fixture's 3 s to start, and nothing here tests a revert.
    .args([
        "--probe-attempts",
        "40",
        "--probe-interval-ms",
        "250",
        "--release-pubkey",
        pubkey,
        "--no-master",
        "--agent-arg=--no-master",
    ]);
    u.daemon = decnet_e2e::Daemon::start(cmd, m.dir.path().join("u3-signed.log"));
    m.ok(&[
        "swarm",
        "set-endpoint",
        "u3",
        "--updater-port",
        &u.daemon.port().to_string(),
    ]);
}

#[test]
fn an_updater_killed_at_any_step_recovers_to_a_healthy_release() {
    for step in [
        "after_extract",
        "after_promote",
        "after_stop",
        "after_start",
    ] {
        let m = MasterHome::new();
        m.enroll("u4");
        let mut u = UpdaterFixture::start(&m, "u4", &[]);
        let v1 = good_release(&m.dir.path().join("v1"), false);
        let v2 = good_release(&m.dir.path().join("v2"), false);
        m.ok(&[
            "swarm",
            "update",
            "--release",
            v1.to_str().unwrap(),
            "--host",
            "u4",
        ]);
        u.restart(&m, &[("DECNET_UPDATER_CRASH_AT", step)]);
        let out = m.run(&[
            "swarm",
            "update",
            "--release",
            v2.to_str().unwrap(),
            "--host",
            "u4",
        ]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{step}: the update died with the updater"
        );
        assert!(
            wait_for(Duration::from_secs(10), || u
                .daemon
                .child
                .try_wait()
                .ok()
                .flatten())
            .is_some(),
            "{step}: updater aborted"
        );
        u.restart(&m, &[]);
        assert!(
            !u.install.join("journal.json").exists(),
            "{step}: journal resolved"
        );
        let ls = labels(&m, "u4");
        assert!(ls[0] == "v1" || ls[0] == "v2", "{step}: {ls:?}");
        assert!(
            wait_for(Duration::from_secs(15), || agent_healthy(&m).then_some(())).is_some(),
            "{step}: agent healthy after recovery; updater log:\n{}",
            u.daemon.log_text()
        );
        let target = std::fs::read_link(u.install.join("current")).unwrap();
        let pid = u.agent_pid().expect("agent running");
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            exe.starts_with(std::fs::canonicalize(u.install.join(&target)).unwrap()),
            "{step}: running code is the active release"
        );
        let staging: Vec<PathBuf> = std::fs::read_dir(u.install.join("releases"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
        assert!(staging.is_empty(), "{step}: staging left: {staging:?}");
    }
}

#[test]
fn update_self_replaces_the_updater_binary() {
    let m = MasterHome::new();
    m.enroll("u5");
    let u = UpdaterFixture::start(&m, "u5", &[]);
    let pid = u.daemon.child.id();
    let before = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let rel = good_release(&m.dir.path().join("v-self"), true);
    let out = m.ok(&[
        "swarm",
        "update",
        "--release",
        rel.to_str().unwrap(),
        "--host",
        "u5",
        "--include-self",
    ]);
    assert!(out.contains("updater replaced"), "{out}");
    let after = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_ne!(before, after);
    assert!(
        after.starts_with(std::fs::canonicalize(u.install.join("updater/releases")).unwrap()),
        "{}",
        after.display()
    );
    // It still works after re-executing.
    assert!(m.run(&["swarm", "releases", "u5"]).status.success());
    // The next update stops the agent the previous image started (still a
    // child of this process): it is reaped, not left a zombie.
    let agent_before = u.agent_pid().expect("an agent runs");
    let rel2 = good_release(&m.dir.path().join("v-next"), false);
    m.ok(&[
        "swarm",
        "update",
        "--release",
        rel2.to_str().unwrap(),
        "--host",
        "u5",
    ]);
    assert_ne!(u.agent_pid(), Some(agent_before), "a new agent runs");
    let zombies: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let rest: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().collect())
                .unwrap_or_default();
            rest.first() == Some(&"Z") && rest.get(1) == Some(&pid.to_string().as_str())
        })
        .collect();
    assert!(
        zombies.is_empty(),
        "zombie children of the re-executed updater: {zombies:?}"
    );
}

/// The attacker: a process on the worker that tries, as fast as it can, to
/// bind the agent's and the updater's ports, and keeps any it gets (so the
/// real daemon cannot start: the probe fails, the update is undone). The
/// updater holds the agent's socket across the agent's restarts and hands
/// its own and the agent's to its successor across a self-update's
/// re-exec: the squatter never gets either port, and both updates succeed.
#[test]
fn a_squatter_never_gets_the_agent_or_updater_port_across_restarts() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let m = MasterHome::new();
    m.enroll("u9");
    let u = UpdaterFixture::start(&m, "u9", &[]);
    let ports = [u.agent_port, u.daemon.port()];
    let rel = good_release(&m.dir.path().join("v-first"), false);
    m.ok(&[
        "swarm",
        "update",
        "--release",
        rel.to_str().unwrap(),
        "--host",
        "u9",
    ]);
    assert!(u.agent_pid().is_some(), "an agent runs");

    let stop = Arc::new(AtomicBool::new(false));
    let won: Arc<Mutex<Vec<u16>>> = Arc::default();
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let squatter = {
        let (stop, won, attempts) = (stop.clone(), won.clone(), attempts.clone());
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for port in ports {
                    for ip in ["127.0.0.1", "0.0.0.0"] {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        if let Ok(l) = std::net::TcpListener::bind((ip, port)) {
                            won.lock().unwrap().push(port);
                            kept.push(l);
                        }
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };

    // An agent restart (a new release), then the updater's own re-exec.
    let rel = good_release(&m.dir.path().join("v-second"), false);
    let agent = m.run(&[
        "swarm",
        "update",
        "--release",
        rel.to_str().unwrap(),
        "--host",
        "u9",
    ]);
    let pid = u.daemon.child.id();
    let before = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let rel = good_release(&m.dir.path().join("v-self"), true);
    let own = m.run(&[
        "swarm",
        "update",
        "--release",
        rel.to_str().unwrap(),
        "--host",
        "u9",
        "--include-self",
    ]);
    // And one more agent restart, by the re-executed updater.
    let rel = good_release(&m.dir.path().join("v-third"), false);
    let after_self = m.run(&[
        "swarm",
        "update",
        "--release",
        rel.to_str().unwrap(),
        "--host",
        "u9",
    ]);
    stop.store(true, Ordering::Relaxed);
    squatter.join().unwrap();

    assert!(
        attempts.load(Ordering::Relaxed) > 100,
        "the squatter tried only {} times",
        attempts.load(Ordering::Relaxed)
    );
    assert_eq!(
        won.lock().unwrap().as_slice(),
        &[] as &[u16],
        "the squatter took a daemon's port (agent {}, updater {})",
        ports[0],
        ports[1]
    );
    for (what, out) in [
        ("agent update", &agent),
        ("self-update", &own),
        ("update after the re-exec", &after_self),
    ] {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{what} failed:\n{text}");
        assert!(
            text.contains("new release is live and healthy") || text.contains("updater replaced"),
            "{what}:\n{text}"
        );
    }
    let after = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_ne!(before, after, "the updater re-executed");
    assert!(agent_healthy(&m), "the agent answers after it all");
}

/// A self-update whose new updater passes `--version` but dies at every
/// start. Started as its systemd unit starts it (through `decnet-updater
/// launch`, restarted after each exit), it gets three starts; then the
/// previous updater runs, reverts the self-update and serves. A good
/// self-update, by contrast, is confirmed once the new updater answers.
#[test]
fn a_self_update_that_crash_loops_falls_back_to_the_previous_updater() {
    let m = MasterHome::new();
    m.enroll("u8");
    let mut u = UpdaterFixture::start(&m, "u8", &[]);
    let journal = u.install.join("updater/journal.json");

    let good = good_release(&m.dir.path().join("v1-good"), true);
    let out = m.ok(&[
        "swarm",
        "update",
        "--release",
        good.to_str().unwrap(),
        "--host",
        "u8",
        "--include-self",
    ]);
    assert!(out.contains("updater replaced"), "{out}");
    assert!(!journal.exists(), "confirmed once the new updater answered");
    let good_slot = std::fs::canonicalize(u.install.join("updater/current")).unwrap();

    // The crash-looping updater, pushed straight to the updater.
    let bad = decnet_e2e::crash_looping_updater_release(&m.dir.path().join("v9-crashes"));
    let (bad_tar, manifests, digest) = packed(&m, &bad, "bad-updater.tar.gz");
    let client = direct_client(&m, "u8", &u);
    let outcome = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(client.update_self(
            &decnet_swarm_client::updater::ReleaseUpload {
                tarball: &bad_tar,
                sha: "v9-crashes",
                sha256: &digest,
                manifests: &manifests,
                allow_downgrade: true,
            },
            Duration::from_secs(3),
        ));
    assert!(
        matches!(
            outcome,
            Err(decnet_swarm_client::ClientError::Timeout { .. })
        ),
        "no new updater answers: {outcome:?}"
    );
    assert!(
        wait_for(Duration::from_secs(10), || u
            .daemon
            .child
            .try_wait()
            .ok()
            .flatten())
        .is_some(),
        "the re-executed updater died"
    );
    assert!(journal.exists(), "unconfirmed: the journal stays");

    // The supervisor restarts it through the launcher: three starts of the
    // new updater, each dying.
    for attempt in 1..=3 {
        let log = u
            .launch(&m)
            .err()
            .unwrap_or_else(|| panic!("start {attempt} of the crashing updater served"));
        assert!(log.contains("crashing updater: cannot start"), "{log}");
        assert!(log.contains("not confirmed yet"), "{log}");
    }
    // Then the previous one: it reverts the self-update and serves.
    u.launch(&m)
        .unwrap_or_else(|log| panic!("the previous updater did not serve:\n{log}"));
    assert!(!journal.exists(), "the self-update is resolved");
    assert_eq!(
        std::fs::canonicalize(u.install.join("updater/current")).unwrap(),
        good_slot
    );
    let exe = std::fs::read_link(format!("/proc/{}/exe", u.daemon.child.id())).unwrap();
    assert!(exe.starts_with(&good_slot), "{}", exe.display());
    let log = u.daemon.log_text();
    assert!(log.contains("reverting the self-update"), "{log}");
    assert!(m.run(&["swarm", "releases", "u8"]).status.success());
    assert!(
        !u.install.join("updater/starts").exists(),
        "the start count went with the journal"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_master_may_call_the_updater() {
    let m = MasterHome::new();
    m.enroll("u6");
    let u = UpdaterFixture::start(&m, "u6", &[]);
    let base = format!("https://{}", u.daemon.addr);
    for (dir, kind) in [
        (m.agent_bundle_dir("u6"), BundleKind::Agent),
        (m.updater_bundle_dir("u6"), BundleKind::Updater),
    ] {
        let c = mtls_client(&dir, kind, "updater@u6");
        for path in ["/health", "/releases"] {
            let r = c.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 403, "{path}");
        }
        let r = c.post(format!("{base}/rollback")).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["required_role"], "master");
    }
    let master = mtls_client(&m.master_bundle_dir(), BundleKind::Master, "updater@u6");
    assert_eq!(
        master
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // update-self without confirm_self is refused. The attacker's (a tar
    // bomb) is received whole, never fed to the extractor (without a
    // keyring, as here, a confirmed one is extracted while it arrives).
    let bomb = tar_bomb();
    let (spooled, extracted) = (streamed(&u, "false"), streamed(&u, "true"));
    let form = reqwest::multipart::Form::new()
        .text("sha", "bomb")
        .text("sha256", sha256_hex(&bomb))
        .part(
            "tarball",
            reqwest::multipart::Part::bytes(bomb).file_name("r.tar.gz"),
        );
    let r = master
        .post(format!("{base}/update-self"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["detail"].as_str().unwrap().contains("confirm_self"),
        "{v}"
    );
    assert_eq!(
        streamed(&u, "false"),
        spooled + 1,
        "{}",
        u.daemon.log_text()
    );
    assert_eq!(streamed(&u, "true"), extracted, "extracted early");
    assert_eq!(unfinished(&u.install), Vec::<String>::new());
    // An updater without a recorded fingerprint is never dialled.
    let db_host = m.json(&["swarm", "show", "u6", "--json"]);
    assert!(db_host["updater_fingerprint"].is_string());
    m.ok(&[
        "swarm",
        "enroll",
        "--host",
        "u6",
        "--address",
        "127.0.0.1",
        "--reissue",
    ]);
    let out = m.run(&["swarm", "releases", "u6"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no updater certificate is recorded"));
}

/// Every error after a promotion — stopping or starting the agent, the
/// commit, the revert — leads to the revert-or-recover path: `current`
/// never stays on an unverified release, and while a promotion is
/// unresolved no other one starts.
#[test]
fn errors_after_the_promotion_are_reverted_or_recovered() {
    for fail in ["stop", "start", "commit"] {
        let m = MasterHome::new();
        m.enroll("u7");
        let mut u = UpdaterFixture::start(&m, "u7", &[]);
        let v1 = good_release(&m.dir.path().join("v1"), false);
        let v2 = good_release(&m.dir.path().join("v2"), false);
        m.ok(&[
            "swarm",
            "update",
            "--release",
            v1.to_str().unwrap(),
            "--host",
            "u7",
        ]);
        u.restart(&m, &[("DECNET_UPDATER_FAIL_AT", fail)]);
        let out = m.run(&[
            "swarm",
            "update",
            "--release",
            v2.to_str().unwrap(),
            "--host",
            "u7",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{fail}: {stdout}");
        assert!(stdout.contains("ROLLED_BACK"), "{fail}: {stdout}");
        assert_eq!(labels(&m, "u7")[0], "v1", "{fail}");
        assert!(
            !u.install.join("journal.json").exists(),
            "{fail}: journal resolved"
        );
        assert!(
            wait_for(Duration::from_secs(15), || agent_healthy(&m).then_some(())).is_some(),
            "{fail}: the previous release runs; log:\n{}",
            u.daemon.log_text()
        );
    }

    // The revert itself fails: the journal stays, further promotions are
    // refused, and the next start resolves it.
    let m = MasterHome::new();
    m.enroll("u8");
    let mut u = UpdaterFixture::start(&m, "u8", &[]);
    let v1 = good_release(&m.dir.path().join("v1"), false);
    let v2 = good_release(&m.dir.path().join("v2"), false);
    m.ok(&[
        "swarm",
        "update",
        "--release",
        v1.to_str().unwrap(),
        "--host",
        "u8",
    ]);
    u.restart(&m, &[("DECNET_UPDATER_FAIL_AT", "commit,revert")]);
    let out = m.run(&[
        "swarm",
        "update",
        "--release",
        v2.to_str().unwrap(),
        "--host",
        "u8",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        u.install.join("journal.json").exists(),
        "the journal is kept"
    );
    let v3 = good_release(&m.dir.path().join("v3"), false);
    let out = m.run(&[
        "swarm",
        "update",
        "--release",
        v3.to_str().unwrap(),
        "--host",
        "u8",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("unresolved"), "{stdout}");
    u.restart(&m, &[]);
    assert!(
        !u.install.join("journal.json").exists(),
        "resolved at start"
    );
    assert!(
        wait_for(Duration::from_secs(15), || agent_healthy(&m).then_some(())).is_some(),
        "healthy after recovery; log:\n{}",
        u.daemon.log_text()
    );
}

/// An upload spooled when the updater was killed mid-upload is removed at
/// the next start (nothing else in the spool directory is touched).
#[test]
fn uploads_an_interrupted_run_left_are_removed_at_start() {
    let m = MasterHome::new();
    m.enroll("u9");
    let mut u = UpdaterFixture::start(&m, "u9", &[]);
    let spool = u.install.join(".uploads");
    std::fs::create_dir_all(&spool).unwrap();
    let stale = spool.join("upload-0123456789abcdef.tar.gz");
    std::fs::write(&stale, vec![0u8; 1 << 20]).unwrap();
    let other = spool.join("not-an-upload.txt");
    std::fs::write(&other, "kept").unwrap();
    // An upload killed while it was being extracted as it streamed in.
    let half = u.install.join("releases/.upload-0123456789abcdef");
    std::fs::create_dir_all(half.join("bin")).unwrap();
    std::fs::write(half.join("bin/decnet-agent"), b"#!/bin/sh\n").unwrap();
    u.restart(&m, &[]);
    assert!(!stale.exists(), "the stale upload is gone");
    assert!(!half.exists(), "the half-extracted upload is gone");
    assert!(other.exists(), "nothing else is removed");
    assert!(
        u.daemon
            .log_text()
            .contains("removed uploads an interrupted run left behind"),
        "{}",
        u.daemon.log_text()
    );
}

#[test]
fn a_rollout_through_a_context_survives_its_cli_being_killed() {
    use std::io::BufRead;
    let m = MasterHome::new();
    m.enroll("k1");
    m.enroll("k2");
    let _u1 = UpdaterFixture::start(&m, "k1", &[]);
    let _u2 = UpdaterFixture::start(&m, "k2", &[]);
    let v1 = good_release(&m.dir.path().join("rel/v1"), false);
    // The operator starts a rollout, one host at a time, and its CLI dies
    // as soon as the master took the job.
    let mut child = m
        .operator_command(&[
            "swarm",
            "update",
            "--release",
            v1.to_str().unwrap(),
            "--all",
            "--max-parallel",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let id = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "no job started");
        if let Some(rest) = line.strip_prefix("job ")
            && line.contains("started in the master")
        {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    child.kill().unwrap();
    let _ = child.wait();
    // The rollout goes on in the master: following it picks its progress
    // up and ends with every host updated.
    let out = m
        .operator_command(&["job", "follow", &id])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.matches("UPDATED").count() >= 2, "{stdout}");
    for host in ["k1", "k2"] {
        assert_eq!(
            labels(&m, host).first().map(String::as_str),
            Some("v1"),
            "{host}"
        );
    }
    let job = m
        .operator_command(&["job", "show", &id, "--json"])
        .output()
        .unwrap();
    let job: serde_json::Value = serde_json::from_slice(&job.stdout).unwrap();
    assert_eq!(job["kind"], "update");
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["actor"], "operator:e2e-admin");
}
