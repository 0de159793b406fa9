//! The web console in a real browser: headless Chromium (Debian's
//! `chromium` and `chromium-driver`) driven over WebDriver against a real
//! `master serve` with real agents heartbeating every second, a real log
//! forwarder and operators logged in through their own contexts.
//!
//! Played as the people who use it and as the attacker: a one-time URL
//! opens a session once; the fleet page lists every host; a deployer
//! deploys a decky and sees it turn `running` without a reload; a line
//! written on a worker shows in that host's live tail credited to its CN;
//! a viewer sees no action and a forged POST from its session is refused;
//! a change without the CSRF token is refused; a revoked operator's
//! session ends; the logout button ends a session. Screenshots of each
//! page go to `$DECNET_SCREENSHOT_DIR` when set (the wiki's are made so).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use decnet_e2e::{
    Agent, MasterHome, Operator, UpdaterFixture, free_port, good_release, skip, wait_for,
};
use fantoccini::{Client, ClientBuilder, Locator};

/// `chromedriver` on a free loopback port; killed on drop.
struct Driver {
    child: Child,
    port: u16,
    _profiles: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Option<Driver> {
    let found = ["chromedriver", "chromium"].iter().all(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        skip::missing("no headless browser: install Debian's chromium and chromium-driver");
        return None;
    }
    let port = free_port();
    let profiles = tempfile::tempdir().unwrap();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(profiles.path().join("chromedriver.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    })
    .expect("chromedriver listens");
    Some(Driver {
        child,
        port,
        _profiles: profiles,
    })
}

/// A fresh headless browser (its own profile: no cookies).
async fn browser(d: &Driver, profile: &str) -> Client {
    let dir = d._profiles.path().join(profile);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1366,900", format!("--user-data-dir={}", dir.display()),
            ],
        }),
    );
    // The master's certificate is signed by the fleet's own CA, which this
    // throwaway profile does not hold; the TLS is real all the same.
    caps.insert("acceptInsecureCerts".into(), serde_json::Value::Bool(true));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .expect("a WebDriver session")
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Wait (polling the live page, never reloading it) until `f` holds.
async fn until<F, Fut>(c: &Client, what: &str, secs: u64, f: F)
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f(c.clone()).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what}: not within {secs} s");
}

/// The text of `css`, or empty when it is not on the page (yet).
async fn text_or_empty(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn shot(c: &Client, name: &str) {
    let dir = match std::env::var_os("DECNET_SCREENSHOT_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join("decnet-console-screenshots"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// A POST from the page itself (its session cookie rides along), with or
/// without the CSRF token: the answer's status and body.
async fn post_from_page(c: &Client, path: &str, with_token: bool) -> (u64, String) {
    let r = c
        .execute_async(
            r#"const [path, withToken, done] = arguments;
               const headers = {"Content-Type": "application/json"};
               if (withToken) headers["X-CSRF-Token"] = document.querySelector('meta[name="csrf-token"]').content;
               fetch(path, {method: "POST", headers, body: "{}", credentials: "same-origin"})
                 .then(async r => done([r.status, await r.text()]))
                 .catch(e => done([0, String(e)]));"#,
            vec![path.into(), with_token.into()],
        )
        .await
        .unwrap();
    (
        r[0].as_u64().unwrap(),
        r[1].as_str().unwrap_or_default().to_string(),
    )
}

/// `decnet console` without `--print-url` opens the URL in `$BROWSER`.
fn opened_by_browser(op: &Operator) -> String {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("opened");
    let browser = dir.path().join("browser.sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\necho \"$1\" > {}\n", seen.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = op
        .command(&["console"])
        .env("BROWSER", &browser)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("Opening the console"), "{said}");
    let opened = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&seen)
            .ok()
            .filter(|t| !t.is_empty())
    })
    .expect("the browser was started with the URL");
    let url = opened.trim().to_string();
    assert!(said.contains(&url), "the URL is printed too: {said}");
    url
}

fn login_url(op: &Operator) -> String {
    let url = op.ok(&["console", "--print-url"]);
    let url = url.trim().to_string();
    assert!(
        url.starts_with("https://") && url.contains("/login?ticket=") && !url.contains('\n'),
        "{url}"
    );
    url
}

fn decky_config() -> String {
    let cfg = serde_json::json!({"version": 1, "deckies": [{
        "name": "web",
        "services": ["http"],
        "command": ["/bin/sh", "-c", "exec sleep 300"],
    }]});
    serde_json::to_string_pretty(&cfg).unwrap()
}

#[test]
fn the_console_in_a_real_browser() {
    let Some(driver) = driver() else { return };
    let m = MasterHome::new();
    m.enroll("w1");
    m.enroll("w2");
    let master = m.serve(&["--listener-port", "0"]);
    let listener = master.announced("decnet listener listening on");
    let api = master.addr.to_string();
    let beat = ["--master", api.as_str(), "--heartbeat-interval", "1"];
    // w1 runs under its updater (releases can be pushed to it).
    let w1 = UpdaterFixture::start_with(
        &m,
        "w1",
        &[],
        &[
            &format!("--agent-arg=--master={api}"),
            "--agent-arg=--heartbeat-interval=1",
        ],
    );
    let _w2 = Agent::start(&m, "w2", &m.dir.path().join("w2-state"), &beat);
    let admin = Operator::login(&m, &master, "root", "admin", &[]);
    let dee = Operator::login(&m, &master, "dee", "deployer", &[]);
    let vic = Operator::login(&m, &master, "vic", "viewer", &[]);
    // A line written on w1 reaches the master through its forwarder.
    let worker_log = m.dir.path().join("w1-app.log");
    std::fs::write(&worker_log, "").unwrap();
    let _fwd = decnet_e2e::start_forwarder(
        &m,
        "w1",
        listener,
        &worker_log,
        &m.dir.path().join("w1-fwd"),
    );
    // Two rollouts through the deployer's context (w1's agent starts with
    // the first): their jobs hold what the console can push again.
    let rel = m.dir.path().join("rel");
    let mut pushed = Vec::new();
    for v in ["a", "b"] {
        let dir = good_release(&rel.join(v), false);
        std::fs::write(dir.join("VERSION"), v).unwrap();
        let out = dee.ok(&[
            "swarm",
            "update",
            "--release",
            dir.to_str().unwrap(),
            "--host",
            "w1",
        ]);
        assert!(out.contains("UPDATED"), "{out}");
        let slots: serde_json::Value =
            serde_json::from_str(&dee.ok(&["swarm", "releases", "w1", "--json"])).unwrap();
        pushed.push(slots["releases"][0]["sha256"].as_str().unwrap().to_string());
    }
    assert_ne!(pushed[0], pushed[1]);
    wait_for(Duration::from_secs(20), || {
        let list: serde_json::Value =
            serde_json::from_str(&admin.ok(&["swarm", "list", "--json"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .all(|h| h["status"] == "active")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "both hosts heartbeat: {}\nw1's updater:\n{}",
            admin.ok(&["swarm", "list"]),
            w1.daemon.log_text()
        )
    });

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The deployer signs in with its one-time URL.
        let url = login_url(&dee);
        let b = browser(&driver, "dee").await;
        // A link preview's GET uses nothing up: the page names the
        // operator, the button signs in.
        let preview = insecure()
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(preview.contains("Sign in as"), "{preview}");
        assert_eq!(sign_in(&b, &url).await, "dee");
        let rows = text_of(&b, "#fleet tbody").await;
        assert!(rows.contains("w1") && rows.contains("w2"), "{rows}");
        assert!(text_of(&b, "header .who").await.contains("deployer"));
        // Live: the stream is open.
        until(&b, "the live marker", 15, |c| async move {
            text_or_empty(&c, "#live").await == "live"
        })
        .await;
        shot(&b, "fleet").await;

        // The same URL a second time is refused.
        let again = browser(&driver, "again").await;
        again.goto(&url).await.unwrap();
        let body = text_of(&again, "body").await;
        assert!(body.contains("already used"), "{body}");
        assert!(again.find(Locator::Css("#fleet")).await.is_err());
        again.close().await.unwrap();

        // Deploy a decky on w1 and watch it turn running, no reload.
        b.goto(&format!("{}/hosts/w1", origin(&url))).await.unwrap();
        b.find(Locator::Css("#deploy"))
            .await
            .expect("a deployer sees the deploy form");
        b.find(Locator::Css("details.panel summary"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.execute(
            "document.getElementById('config').value = arguments[0];",
            vec![decky_config().into()],
        )
        .await
        .unwrap();
        // A marker on the page: a reload would drop it.
        b.execute("window.__noReload = 1;", vec![]).await.unwrap();
        b.find(Locator::Css("#deploy button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.accept_alert()
            .await
            .expect("the deploy asks for confirmation");
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while text_or_empty(&b, "#deckies tr[data-decky=\"web\"] .badge").await != "running" {
            if std::time::Instant::now() > end {
                let toast = b
                    .execute("return document.getElementById('toast').textContent;", vec![])
                    .await
                    .unwrap_or_default();
                panic!(
                    "decky web running on w1: not within 60 s\n\
                     deckies on the page: {}\ntoast: {toast}\nthe master's view: {}\n\
                     the master:\n{}\nw1's updater and agent:\n{}",
                    text_or_empty(&b, "#deckies").await,
                    admin.ok(&["swarm", "show", "w1"]),
                    master.log_text(),
                    w1.daemon.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let kept = b
            .execute("return window.__noReload;", vec![])
            .await
            .unwrap();
        assert_eq!(kept, serde_json::json!(1), "the page was reloaded");

        // A line written on w1 shows in its live tail, credited to w1.
        let line = format!("console-tail-{}", decnet_pki::random_hex(4));
        decnet_e2e::append_lines(
            &worker_log,
            &[format!("<13>1 2026-12-05T10:00:00Z web sshd 77 - - {line}")],
        );
        let wanted = line.clone();
        until(&b, "the live tail shows the line", 30, move |c| {
            let wanted = wanted.clone();
            async move { text_or_empty(&c, "#tail").await.contains(&wanted) }
        })
        .await;
        let tail = text_of(&b, "#tail li").await;
        assert!(tail.starts_with("w1 "), "credited to w1's CN: {tail}");

        // No CSRF token: refused, whatever the role.
        let (status, body) = post_from_page(&b, "/v1/hosts/w1/teardown", false).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("csrf"), "{body}");
        // With it, the deployer's teardown goes through (the same /v1 route).
        let (status, body) = post_from_page(&b, "/v1/hosts/w2/teardown", true).await;
        assert_eq!(status, 200, "{body}");

        // Push release a to w1 again from its page: the slots follow, no reload.
        b.goto(&format!("{}/hosts/w1", origin(&url))).await.unwrap();
        let active = pushed[1].clone();
        until(&b, "w1's release slots", 30, move |c| {
            let active = active.clone();
            async move {
                c.find(Locator::Css("#release-slots tbody tr"))
                    .await
                    .ok()
                    .is_some()
                    && text_or_empty(&c, "#release-slots").await.contains(&active[..16])
            }
        })
        .await;
        until(&b, "the update form", 20, |c| async move {
            c.find(Locator::Css("#update:not([hidden]) option")).await.is_ok()
        })
        .await;
        b.execute(
            r#"const sel = document.getElementById('release');
               for (const o of sel.options) if (o.textContent.includes(arguments[0])) sel.value = o.value;"#,
            vec![pushed[0][..12].into()],
        )
        .await
        .unwrap();
        b.execute("window.__noReload = 2;", vec![]).await.unwrap();
        b.find(Locator::Css("#update button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.accept_alert().await.expect("the update asks for confirmation");
        let wanted = pushed[0].clone();
        until(&b, "release a active again on w1", 90, move |c| {
            let wanted = wanted.clone();
            async move {
                c.find(Locator::Css("#release-slots tbody tr"))
                    .await
                    .ok()
                    .map(|_| ())
                    .is_some()
                    && match c
                        .execute(
                            "const r = document.querySelector('#release-slots tbody tr'); return r ? r.dataset.sha256 : '';",
                            vec![],
                        )
                        .await
                    {
                        Ok(v) => v.as_str() == Some(wanted.as_str()),
                        Err(_) => false,
                    }
            }
        })
        .await;
        let kept = b.execute("return window.__noReload;", vec![]).await.unwrap();
        assert_eq!(kept, serde_json::json!(2), "the page was reloaded");
        shot(&b, "host").await;

        // A viewer: no action anywhere, and a forged POST is refused.
        let v = browser(&driver, "vic").await;
        // `decnet console` opens the viewer's browser on its URL.
        assert_eq!(sign_in(&v, &opened_by_browser(&vic)).await, "vic");
        v.goto(&format!("{}/hosts/w1", origin(&url))).await.unwrap();
        v.find(Locator::Css("#deckies")).await.unwrap();
        assert!(v.find(Locator::Css("button[data-action]")).await.is_err());
        assert!(v.find(Locator::Css("#deploy")).await.is_err());
        assert!(v.find(Locator::Css("#update")).await.is_err());
        let (status, body) = post_from_page(&v, "/v1/hosts/w1/teardown", true).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("deployer"), "{body}");
        let (status, _) = post_from_page(&v, "/v1/hosts/w1/burn", true).await;
        assert_eq!(status, 403);
        // The decky is still there.
        let st = admin.ok(&["swarm", "status", "w1", "--json"]);
        assert!(st.contains("\"web\""), "{st}");

        // The admin's pages.
        // The admin's URL made on the master host, without a context.
        let console = master.announced("console listening on");
        let local = m.ok(&[
            "console",
            "--operator",
            "root",
            "--print-url",
            "--url-host",
            "127.0.0.1",
            "--console-port",
            &console.port().to_string(),
        ]);
        assert_eq!(
            origin(local.trim()),
            origin(&url),
            "the local URL names the console"
        );
        let a = browser(&driver, "root").await;
        assert_eq!(sign_in(&a, local.trim()).await, "root");

        // Login CSRF: a page elsewhere posting someone's ticket signs no
        // browser in (and the ticket is not used up).
        let victim_ticket = login_url(&admin);
        let ticket = victim_ticket.rsplit('=').next().unwrap().to_string();
        for origin_header in [Some("https://evil.example"), None] {
            let mut req = insecure()
                .post(format!("{}/login", origin(&url)))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(format!("ticket={ticket}"));
            if let Some(o) = origin_header {
                req = req.header("Origin", o);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 403, "cross-site sign-in from {origin_header:?}");
            assert!(r.headers().get("set-cookie").is_none());
        }
        let still = insecure()
            .get(&victim_ticket)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(still.contains("Sign in as"), "the ticket was used up: {still}");
        for (path, name, marker) in [
            ("/jobs", "jobs", "#jobs"),
            ("/audit?action=swarm.", "audit", "#audit"),
            ("/alerts", "alerts", "#deliveries"),
            ("/operators", "operators", "main table"),
        ] {
            a.goto(&format!("{}{path}", origin(&url))).await.unwrap();
            a.find(Locator::Css(marker))
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            shot(&a, name).await;
        }
        let audit = text_of(&a, "body").await;
        assert!(audit.contains("operator"), "{audit}");
        // The deploy job's page, with per-host progress.
        a.goto(&format!("{}/jobs", origin(&url))).await.unwrap();
        a.find(Locator::Css("#jobs tr[data-kind=\"deploy\"] a"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(&a, "the job's hosts", 20, |c| async move {
            text_or_empty(&c, "#job-hosts").await.contains("w1")
        })
        .await;
        shot(&a, "job").await;
        // Readable on a phone: the fleet and a host at 390 px wide, no
        // horizontal scrolling of the page itself (tables scroll in place).
        a.set_window_size(390, 844).await.unwrap();
        for (path, name) in [("/", "fleet-phone"), ("/hosts/w1", "host-phone")] {
            a.goto(&format!("{}{path}", origin(&url))).await.unwrap();
            let overflow = a
                .execute(
                    "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                    vec![],
                )
                .await
                .unwrap();
            assert!(
                overflow.as_i64().unwrap_or(0) <= 0,
                "{path} scrolls sideways on a phone: {overflow}"
            );
            shot(&a, name).await;
        }
        a.set_window_size(1366, 900).await.unwrap();
        // A CA rotation shows on the fleet page while it is under way.
        a.goto(&format!("{}/", origin(&url))).await.unwrap();
        assert!(a.find(Locator::Css("#rotation")).await.is_err());
        m.ok(&["ca", "rotation", "start"]);
        a.goto(&format!("{}/", origin(&url))).await.unwrap();
        let banner = text_of(&a, "#rotation").await;
        assert!(banner.contains("CA rotation is under way"), "{banner}");
        shot(&a, "fleet-rotation").await;
        m.ok(&["ca", "rotation", "abort", "--wait", "60"]);
        a.goto(&format!("{}/", origin(&url))).await.unwrap();
        assert!(a.find(Locator::Css("#rotation")).await.is_err());
        // The viewer sees no operators page.
        v.goto(&format!("{}/operators", origin(&url)))
            .await
            .unwrap();
        assert!(text_of(&v, "body").await.contains("admin"));

        // Revoking the viewer ends its session.
        admin.ok(&["operator", "revoke", "vic"]);
        v.goto(&format!("{}/", origin(&url))).await.unwrap();
        let body = text_of(&v, "body").await;
        assert!(
            body.contains("session ended") || body.contains("revoked"),
            "{body}"
        );
        assert!(v.find(Locator::Css("#fleet")).await.is_err());

        // The logout button ends the deployer's.
        b.goto(&format!("{}/", origin(&url))).await.unwrap();
        b.find(Locator::Css("#logout"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#why"))
            .await
            .unwrap();
        b.goto(&format!("{}/", origin(&url))).await.unwrap();
        assert!(b.find(Locator::Css("#fleet")).await.is_err());

        for c in [b, v, a] {
            let _ = c.close().await;
        }
    });
    drop(w1);
}

/// A client of the console that does not check the master's certificate
/// (it plays a browser elsewhere, or a link preview).
fn insecure() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Open a one-time URL and press its sign-in button: the operator the page
/// named; on the fleet page after.
async fn sign_in(c: &Client, url: &str) -> String {
    c.goto(url).await.unwrap();
    let who = c
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css("#who"))
        .await
        .expect("the sign-in page")
        .text()
        .await
        .unwrap();
    c.find(Locator::Css("#signin"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css("#fleet"))
        .await
        .expect("the fleet page after signing in");
    who
}

/// `https://host:port` of a URL.
fn origin(url: &str) -> String {
    let rest = url.trim_start_matches("https://");
    format!("https://{}", rest.split('/').next().unwrap())
}
