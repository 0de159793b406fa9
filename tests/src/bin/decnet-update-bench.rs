//! `decnet-update-bench`: push-to-healthy time of a ~50 MB release through
//! the updater, the time of an automatic revert, and the floor (`tar xzf` of
//! the same tarball plus one agent start until it answers). Prints figures.
//!
//! Run: `cargo run --release -p decnet-e2e --bin decnet-update-bench -- [MB]`

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use decnet_e2e::{Agent, MasterHome, UpdaterFixture, broken_release, good_release};
use decnet_pki::{Bundle, BundleKind, Fingerprint};
use decnet_swarm_client::updater::{ReleaseUpload, UpdateOutcome};

fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    m.enroll("bench");
    let u = UpdaterFixture::start(&m, "bench", &[]);
    // A release padded with incompressible data to about MB megabytes.
    let rel = good_release(&m.dir.path().join("rel"), false);
    let agent_size = std::fs::metadata(rel.join("bin/decnet-agent"))
        .unwrap()
        .len() as usize;
    std::fs::create_dir_all(rel.join("share")).unwrap();
    let pad = (mb << 20).saturating_sub(agent_size);
    let mut f = std::fs::File::create(rel.join("share/blob.bin")).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    let mut written = 0;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while written < pad {
        let n = chunk.len().min(pad - written);
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        f.write_all(&chunk[..n]).unwrap();
        written += n;
    }
    drop(f);
    let tarball = m.dir.path().join("rel.tar.gz");
    let t = Instant::now();
    let packed = decnet_master_pack(&rel, &tarball);
    let pack_secs = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(&tarball).unwrap().len();
    println!(
        "decnet-update-bench: release of {:.1} MB uncompressed, {:.1} MB tarball (packed in {pack_secs:.2}s)",
        (agent_size + pad) as f64 / 1e6,
        size as f64 / 1e6
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let master = Bundle::load(&m.master_bundle_dir(), BundleKind::Master).unwrap();
    let show = m.json(&["swarm", "show", "bench", "--json"]);
    let pin: Fingerprint = show["updater_fingerprint"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let client = decnet_swarm_client::UpdaterClient::new(
        "bench",
        &master,
        "127.0.0.1",
        u.daemon.port(),
        vec![pin],
    )
    .unwrap();
    let up = ReleaseUpload {
        tarball: &tarball,
        sha: "bench",
        sha256: &packed,
        manifests: &[],
        allow_downgrade: true,
    };
    for round in 1..=3 {
        let t = Instant::now();
        let r = rt.block_on(client.update(&up)).unwrap();
        assert!(matches!(r, UpdateOutcome::Updated(_)));
        println!(
            "push-to-healthy (round {round}): {:.2}s (upload, verify, extract, preflight, swap, restart, probe)",
            t.elapsed().as_secs_f64()
        );
    }
    let bad_dir = broken_release(&m.dir.path().join("bad"));
    let bad_tar = m.dir.path().join("bad.tar.gz");
    let bad_sha = decnet_master_pack(&bad_dir, &bad_tar);
    let bad = ReleaseUpload {
        tarball: &bad_tar,
        sha: "broken",
        sha256: &bad_sha,
        manifests: &[],
        allow_downgrade: true,
    };
    let t = Instant::now();
    let r = rt.block_on(client.update(&bad)).unwrap();
    let revert_secs = t.elapsed().as_secs_f64();
    let UpdateOutcome::RolledBack(body) = r else {
        panic!("the broken release was not rolled back: {r:?}")
    };
    println!(
        "automatic revert of a release whose agent exits at start: {revert_secs:.2}s (install, start, probe until the agent is seen gone, restore, start, probe)"
    );
    for (what, key) in [
        ("probe", "probe"),
        ("probe after the restore", "restore_probe"),
    ] {
        if let Some(lines) = body[key]["transcript"].as_array() {
            println!("  {what}: {} attempt line(s)", lines.len());
            for l in lines {
                println!("    {}", l.as_str().unwrap_or_default());
            }
        }
    }

    // The floor: tar xzf + one agent start until /health answers.
    let x = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let st = Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(x.path())
        .status()
        .unwrap();
    assert!(st.success());
    let tar_secs = t.elapsed().as_secs_f64();
    m.enroll("floor");
    let t = Instant::now();
    let agent = Agent::start(&m, "floor", &m.dir.path().join("floor-state"), &[]);
    let c = decnet_e2e::mtls_client(&m.master_bundle_dir(), BundleKind::Master, "floor");
    let url = format!("https://{}/health", agent.daemon.addr);
    rt.block_on(async {
        loop {
            if c.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let start_secs = t.elapsed().as_secs_f64();
    println!(
        "floor: tar xzf {tar_secs:.2}s + agent start to healthy {start_secs:.2}s = {:.2}s",
        tar_secs + start_secs
    );
    drop(u);
}

/// Pack like `decnet release pack` does (the same code path through the CLI).
fn decnet_master_pack(dir: &std::path::Path, out: &std::path::Path) -> String {
    let o = Command::new(decnet_e2e::bin("decnet"))
        .args(["release", "pack"])
        .arg(dir)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
