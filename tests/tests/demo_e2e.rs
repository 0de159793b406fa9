//! The README's main job: `decnet demo` runs a local fleet, verifies every
//! step, exits 0, and leaves no process behind — also when interrupted.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use decnet_e2e::{bin, wait_for};

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next())
                .is_some_and(|st| st == "Z")
        });
        // Deckies do not name the dir on their command line, but their
        // output goes to log files inside it.
        let open_inside = std::fs::read_dir(e.path().join("fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains(needle))
            })
        });
        if (cmd.contains(needle) || open_inside) && !zombie {
            found.push(cmd);
        }
    }
    found
}

#[test]
fn demo_verifies_every_step_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let out = Command::new(bin("decnet"))
        .args(["demo", "--workers", "2", "--dir"])
        .arg(&demo_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("demo complete: every step verified"),
        "{text}"
    );
    assert!(text.contains("ROLLED_BACK"), "{text}");
    assert!(text.contains("worker-2"), "{text}");
    // Into a pipe: plain text, no terminal codes.
    assert!(
        !text.contains('\x1b'),
        "escape codes in redirected output:\n{text}"
    );
    let leftovers = wait_for(Duration::from_secs(5), || {
        let p = processes_mentioning(demo_dir.to_str().unwrap());
        p.is_empty().then_some(())
    });
    assert!(
        leftovers.is_some(),
        "left running: {:?}",
        processes_mentioning(demo_dir.to_str().unwrap())
    );
}

#[test]
fn interrupted_demo_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let mut child = Command::new(bin("decnet"))
        .args(["demo", "--workers", "2", "--dir"])
        .arg(&demo_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "demo ended before step 5"
        );
        if line.contains("step 5") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    decnet_e2e::signal(child.id(), rustix::process::Signal::INT);
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "an interrupted demo does not claim success"
    );
    let gone = wait_for(Duration::from_secs(10), || {
        processes_mentioning(demo_dir.to_str().unwrap())
            .is_empty()
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "left running: {:?}",
        processes_mentioning(demo_dir.to_str().unwrap())
    );
}
