//! Interop with a real syslog implementation: rsyslog (with its GnuTLS
//! driver) sending into our listener with `omfwd` over TLS and octet-counted
//! framing, and our forwarder sending into rsyslog's `imtcp` TLS receiver,
//! all with certificates from our CA. `scripts/test.sh` installs rsyslog;
//! where it is missing the tests are skipped (a failure under CI).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use decnet_e2e::{
    Daemon, Listener, MasterHome, append_lines, free_port, start_forwarder, wait_for,
};

fn rsyslogd() -> Option<PathBuf> {
    let p = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
    let gtls = [
        "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so",
        "/usr/lib/rsyslog/lmnsd_gtls.so",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    gtls.then_some(p)
}

fn skip(what: &str) {
    decnet_e2e::skip::missing(&format!(
        "\n!!!!!!!!\n!!! rsyslog with rsyslog-gnutls is NOT installed: {what} NOT tested (scripts/test.sh installs it)\n!!!!!!!!\n"
    ));
}

fn start_rsyslog(bin: &Path, dir: &Path, conf: &str) -> Daemon {
    let work = dir.join("rsyslog-work");
    std::fs::create_dir_all(&work).unwrap();
    let conf_path = dir.join("rsyslog.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let check = Command::new(bin)
        .args(["-N1", "-f"])
        .arg(&conf_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "rsyslog refuses the config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut cmd = Command::new(bin);
    cmd.args(["-n", "-f"])
        .arg(&conf_path)
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .stdout(Stdio::null());
    Daemon::spawn(cmd, dir.join("rsyslogd.log"))
}

#[test]
fn rsyslog_omfwd_over_tls_into_our_listener() {
    let Some(bin) = rsyslogd() else {
        return skip("rsyslog -> listener");
    };
    let m = MasterHome::new();
    m.enroll("rsys-worker");
    let l = Listener::start(&m, 0);
    let dir = m.dir.path().join("rs1");
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = m.agent_bundle_dir("rsys-worker");
    let input = dir.join("input.log");
    std::fs::write(&input, "").unwrap();
    let conf = format!(
        r#"
global(workDirectory="{work}"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{b}/ca.crt"
       DefaultNetstreamDriverCertFile="{b}/worker.crt"
       DefaultNetstreamDriverKeyFile="{b}/worker.key")
module(load="imfile" PollingInterval="1")
input(type="imfile" File="{input}" Tag="honeypot" Severity="warning" Facility="local0")
action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp"
       StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/certvalid"
       TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format"
       action.resumeRetryCount="-1" action.resumeInterval="1")
"#,
        work = dir.join("rsyslog-work").display(),
        b = bundle.display(),
        input = input.display(),
        port = l.daemon.port(),
    );
    let _rs = start_rsyslog(&bin, &dir, &conf);
    std::thread::sleep(Duration::from_millis(500));
    append_lines(
        &input,
        &[
            "from rsyslog one".into(),
            "from rsyslog two".into(),
            "from rsyslog three".into(),
        ],
    );
    let recs = wait_for(Duration::from_secs(30), || {
        let r: Vec<serde_json::Value> = l
            .records()
            .into_iter()
            .filter(|r| {
                r["msg"]
                    .as_str()
                    .is_some_and(|m| m.contains("from rsyslog"))
            })
            .collect();
        (r.len() >= 3).then_some(r)
    })
    .unwrap_or_else(|| {
        panic!(
            "rsyslog lines never arrived; listener log:\n{}",
            l.daemon.log_text()
        )
    });
    for (i, want) in ["one", "two", "three"].iter().enumerate() {
        assert!(
            recs[i]["msg"].as_str().unwrap().ends_with(want),
            "{}",
            recs[i]
        );
        assert_eq!(recs[i]["peer_cn"], "rsys-worker");
        assert_eq!(recs[i]["app_name"], "honeypot");
        assert_eq!(recs[i]["severity"], 4);
        assert_eq!(recs[i]["facility"], 16);
    }
}

#[test]
fn our_forwarder_into_rsyslog_imtcp_tls() {
    let Some(bin) = rsyslogd() else {
        return skip("forwarder -> rsyslog");
    };
    let m = MasterHome::new();
    m.enroll("fwd-worker");
    let dir = m.dir.path().join("rs2");
    std::fs::create_dir_all(&dir).unwrap();
    // rsyslog serves with a certificate from our CA (here the master's own).
    let server = m.master_bundle_dir();
    let out = dir.join("received.log");
    let port = free_port();
    let conf = format!(
        r#"
global(workDirectory="{work}"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{b}/ca.crt"
       DefaultNetstreamDriverCertFile="{b}/worker.crt"
       DefaultNetstreamDriverKeyFile="{b}/worker.key")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.Authmode="x509/certvalid")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="plain" type="string" string="%HOSTNAME% %APP-NAME% %msg%\n")
action(type="omfile" file="{out}" template="plain")
"#,
        work = dir.join("rsyslog-work").display(),
        b = server.display(),
        port = port,
        out = out.display(),
    );
    let _rs = start_rsyslog(&bin, &dir, &conf);
    // Wait until rsyslog listens.
    wait_for(Duration::from_secs(15), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .expect("rsyslog imtcp listening");
    let log = dir.join("app.log");
    append_lines(
        &log,
        &[
            "alpha to rsyslog".into(),
            "beta to rsyslog".into(),
            "gamma to rsyslog".into(),
        ],
    );
    let _fwd = start_forwarder(
        &m,
        "fwd-worker",
        ([127, 0, 0, 1], port).into(),
        &log,
        &dir.join("fwd-state"),
    );
    let got = wait_for(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&out).ok()?;
        let lines: Vec<String> = text.lines().map(String::from).collect();
        (lines.len() >= 3).then_some(lines)
    })
    .unwrap_or_else(|| {
        panic!(
            "rsyslog received nothing; rsyslog log:\n{}",
            std::fs::read_to_string(dir.join("rsyslogd.log")).unwrap_or_default()
        )
    });
    assert_eq!(got[0], "fwd-worker decnet alpha to rsyslog");
    assert_eq!(got[1], "fwd-worker decnet beta to rsyslog");
    assert_eq!(got[2], "fwd-worker decnet gamma to rsyslog");
}
