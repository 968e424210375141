//! The page in a real headless Chromium (Debian's `chromium`), driven over
//! the W3C WebDriver protocol through Debian's `chromedriver`: signing in,
//! two servers' pins side by side with the disagreeing one marked, a
//! promotion appearing without a reload, an admin's rollback through the
//! form, a read session without forms, a forged post refused, signing out,
//! and a revoked token ending its session. The run also takes the README's
//! screenshot (written to the target directory; with
//! `PINION_BLESS_SCREENSHOT=1`, to `docs/ui.png`).
//!
//! The WebDriver client is the few commands the test needs, over the
//! suite's own HTTP client: the protocol is JSON over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::support::{Env, Server, closed_port, http, poll_until, register_secret};
use crate::ui::digest;

const PROMOTE: &str = "/cp/admin/runtime-image/promote";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `chromedriver` on a free port, stopped when dropped.
struct Driver {
    child: Child,
    addr: SocketAddr,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let port = closed_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (Debian package chromium-driver; `cargo xtask test` installs it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let driver = Driver {
            child,
            addr,
            _profile: tempfile::tempdir().unwrap(),
        };
        poll_until("chromedriver answers", Duration::from_secs(20), || {
            std::net::TcpStream::connect(addr).ok()?;
            let (status, body) = wd(addr, "GET", "/status", None);
            (status == 200 && body["value"]["ready"] == true).then_some(())
        });
        driver
    }

    /// A new headless browser.
    fn browser(&self) -> Browser {
        let profile = self
            ._profile
            .path()
            .join(format!("profile-{}", closed_port()));
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": "/usr/bin/chromium",
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--window-size=1280,800",
                            format!("--user-data-dir={}", profile.display()),
                        ]
                    }
                }
            }
        });
        let (status, answer) = wd(self.addr, "POST", "/session", Some(capabilities));
        assert_eq!(status, 200, "a browser session: {answer}");
        let id = answer["value"]["sessionId"].as_str().unwrap().to_owned();
        Browser {
            driver: self.addr,
            id,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser window.
struct Browser {
    driver: SocketAddr,
    id: String,
}

impl Browser {
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = wd(
            self.driver,
            method,
            &format!("/session/{}{path}", self.id),
            body,
        );
        assert_eq!(status, 200, "WebDriver {method} {path}: {answer}");
        answer["value"].clone()
    }

    fn go(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    fn url(&self) -> String {
        self.command("GET", "/url", None)
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn source(&self) -> String {
        self.command("GET", "/source", None)
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        self.command(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        )
        .as_array()
        .unwrap()
        .iter()
        .map(|element| element[ELEMENT].as_str().unwrap().to_owned())
        .collect()
    }

    fn find(&self, css: &str) -> String {
        let found = self.find_all(css);
        assert_eq!(
            found.len(),
            1,
            "one element for `{css}` in {}",
            self.source()
        );
        found[0].clone()
    }

    /// The text of the one element `css` finds, read in one script (the
    /// live page may swap its content between two commands).
    fn text(&self, css: &str) -> String {
        let script = format!(
            "var found = document.querySelectorAll({css:?});
             return found.length === 1 ? found[0].innerText : 'found ' + found.length;"
        );
        let text = self.run(&script).as_str().unwrap_or_default().to_owned();
        assert!(
            !text.starts_with("found "),
            "one element for `{css}`: {text}"
        );
        text
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn click(&self, css: &str) {
        let element = self.find(css);
        self.command(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    fn run(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    fn screenshot(&self) -> Vec<u8> {
        let encoded = self.command("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap()
    }

    /// Signs in on the login form with `token`, from wherever the browser is.
    fn sign_in(&self, base: &str, token: &str) {
        self.go(&format!("{base}/ui"));
        assert!(
            self.url().contains("/ui/login"),
            "sent to sign in: {}",
            self.url()
        );
        self.type_into("#token", token);
        self.click("form[action='/ui/login'] button[type=submit]");
        poll_until("signed in", Duration::from_secs(10), || {
            self.url().ends_with("/ui").then_some(())
        });
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = wd(
            self.driver,
            "DELETE",
            &format!("/session/{}", self.id),
            None,
        );
    }
}

/// One WebDriver request. `chromedriver` keeps the connection open after
/// its answer, so the answer is read by its `Content-Length`.
fn wd(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    use std::io::{Read, Write};
    let body = body.map(|body| body.to_string()).unwrap_or_default();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let (head_len, length) = loop {
        let read = stream.read(&mut chunk).unwrap();
        assert!(read > 0, "chromedriver closed the connection: {raw:?}");
        raw.extend_from_slice(&chunk[..read]);
        if let Some(end) = raw.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while raw.len() < head_len + length {
        let read = stream.read(&mut chunk).unwrap();
        assert!(read > 0, "chromedriver closed the connection mid-answer");
        raw.extend_from_slice(&chunk[..read]);
    }
    let head = String::from_utf8_lossy(&raw[..head_len]);
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0);
    let body = &raw[head_len..head_len + length];
    let value = serde_json::from_slice(body).unwrap_or(Value::Null);
    (status, value)
}

/// One environment's server with its tokens and two templates.
struct Environment {
    server: Server,
    _env: Env,
    admin: String,
    ci: String,
    read: String,
}

impl Environment {
    fn start(name: &str, args: &[&str], vars: &[(&str, &str)]) -> Environment {
        let env = Env::new();
        let admin = env.token("platform", "admin", &[]);
        let ci = env.token("ci", "promote", &[]);
        let read = env.token("viewer", "read", &[]);
        let mut all_vars = vec![("PINION_ENVIRONMENT", name)];
        all_vars.extend_from_slice(vars);
        let server = Server::start_with_args(&env.database(), &all_vars, args);
        for template in ["codex", "hermes", "claude-code"] {
            let put = http(
                server.addr,
                "PUT",
                &format!("/cp/admin/runtimes/{template}"),
                Some(&admin),
                Some(br#"{"image":null}"#),
            );
            assert!(put.status == 201, "{put:?}");
        }
        Environment {
            server,
            _env: env,
            admin,
            ci,
            read,
        }
    }

    fn promote(&self, template: &str, region: &str, n: u32, notes: &str) {
        let body = json!({
            "template_name": template,
            "region": region,
            "image_digest": digest(n),
            "notes": notes,
            "git_sha": format!("{n:x}").repeat(40),
        })
        .to_string();
        let answer = self.server.post(PROMOTE, &self.ci, &body);
        assert_eq!(answer.status, 201, "{answer:?}");
    }
}

fn short(n: u32) -> String {
    digest(n)["sha256:".len().."sha256:".len() + 12].to_owned()
}

#[test]
fn the_page_in_a_real_browser() {
    let staging = Environment::start("staging", &[], &[]);
    staging.promote("codex", "global", 1, "staging build");
    staging.promote("hermes", "global", 3, "staging build");
    staging.promote("claude-code", "global", 5, "staging build");
    staging.promote("claude-code", "eu", 6, "staging eu");
    let peer = format!("staging={}", staging.server.url());
    let prod = Environment::start(
        "prod",
        &["--peer", &peer],
        &[("PINION_PEER_TOKEN_STAGING", staging.read.as_str())],
    );
    prod.promote("codex", "global", 1, "from staging");
    prod.promote("hermes", "global", 2, "older");
    prod.promote("claude-code", "global", 5, "from staging");
    prod.promote("claude-code", "eu", 6, "from staging");
    let base = prod.server.url();

    let driver = Driver::start();
    let browser = driver.browser();

    // Sign in with a read token; the matrix shows both servers' pins.
    browser.sign_in(&base, &prod.read);
    poll_until("the peer's column", Duration::from_secs(20), || {
        (!browser
            .find_all("td[data-env='staging'][data-template='hermes']")
            .is_empty())
        .then_some(())
    });
    let cell = |env: &str, template: &str, region: &str| {
        browser.text(&format!(
            "td[data-env='{env}'][data-template='{template}'][data-region='{region}']"
        ))
    };
    for (env, template, region, n) in [
        ("prod", "codex", "global", 1),
        ("staging", "codex", "global", 1),
        ("prod", "hermes", "global", 2),
        ("staging", "hermes", "global", 3),
        ("prod", "claude-code", "global", 5),
        ("prod", "claude-code", "eu", 6),
        ("staging", "claude-code", "eu", 6),
    ] {
        let text = cell(env, template, region);
        assert!(
            text.contains(&short(n)),
            "{env}/{template}/{region}: {text}"
        );
    }
    // Only hermes disagrees, and it says so in words.
    let differing = browser.find_all("td.differs");
    assert_eq!(
        differing.len(),
        2,
        "hermes in both environments: {}",
        browser.source()
    );
    assert!(cell("prod", "hermes", "global").contains("≠ differs"));
    assert!(!cell("prod", "codex", "global").contains("differs"));
    let screenshot = browser.screenshot();
    assert!(screenshot.starts_with(b"\x89PNG"), "a PNG screenshot");
    save_screenshot(&screenshot);

    // A promotion appears without a reload: the page follows the stream.
    poll_until(
        "the page follows the stream",
        Duration::from_secs(10),
        || (browser.run("return document.body.getAttribute('data-live')") == "yes").then_some(()),
    );
    browser.run("window.pinionMarker = 'still this page'; return null");
    prod.promote("codex", "global", 7, "new build");
    poll_until("the new digest shows", Duration::from_secs(10), || {
        cell("prod", "codex", "global")
            .contains(&short(7))
            .then_some(())
    });
    assert_eq!(
        browser.run("return window.pinionMarker"),
        "still this page",
        "the page was not reloaded"
    );
    assert!(
        cell("prod", "codex", "global").contains("≠ differs"),
        "codex now disagrees"
    );

    // A read session has no form that changes anything.
    browser.go(&format!("{base}/ui/pins/codex/global"));
    assert!(browser.find_all("form[action$='/rollback']").is_empty());
    assert!(browser.find_all("form[action$='/hold']").is_empty());
    // Sign out.
    browser.click("form[action='/ui/logout'] button");
    poll_until("signed out", Duration::from_secs(10), || {
        browser.url().contains("/ui/login").then_some(())
    });
    browser.go(&format!("{base}/ui"));
    assert!(browser.url().contains("/ui/login"), "the session is over");

    // An admin rolls codex back through the form, with a reason.
    browser.sign_in(&base, &prod.admin);
    browser.go(&format!("{base}/ui/pins/codex/global"));
    browser.type_into("#rollback-reason", "new build crashes on start");
    browser.click("form[action$='/rollback'] button[type=submit]");
    poll_until("rolled back", Duration::from_secs(10), || {
        browser
            .text("ol.history li:first-child")
            .contains("new build crashes on start")
            .then_some(())
    });
    let first = browser.text("ol.history li:first-child");
    assert!(
        first.starts_with("rollback to ") && first.contains(&short(1)),
        "{first}"
    );
    assert_eq!(
        prod.server.pinned(&prod.read, "codex", "global"),
        Some(digest(1))
    );

    // A forged post without the CSRF token is refused, and changes nothing.
    browser.run(
        "var form = document.createElement('form');
         form.method = 'post';
         form.action = '/ui/pins/hermes/global/rollback';
         var reason = document.createElement('input');
         reason.name = 'reason'; reason.value = 'forged';
         form.appendChild(reason);
         document.body.appendChild(form);
         form.submit();
         return null",
    );
    poll_until("the refusal", Duration::from_secs(10), || {
        browser.source().contains("CSRF").then_some(())
    });
    assert!(browser.source().contains("403"));
    assert_eq!(
        prod.server.pinned(&prod.read, "hermes", "global"),
        Some(digest(2))
    );

    // Revoking the token ends its session within a few seconds, on an open
    // page, without anyone touching it.
    let made = http(
        prod.server.addr,
        "POST",
        "/cp/admin/tokens",
        Some(&prod.admin),
        Some(br#"{"name":"on-call","scope":"read"}"#),
    );
    assert_eq!(made.status, 201, "{made:?}");
    let on_call = made.json()["secret"].as_str().unwrap().to_owned();
    register_secret(&on_call);
    browser.click("form[action='/ui/logout'] button");
    poll_until("signed out", Duration::from_secs(10), || {
        browser.url().contains("/ui/login").then_some(())
    });
    browser.sign_in(&base, &on_call);
    poll_until(
        "the page follows the stream",
        Duration::from_secs(10),
        || (browser.run("return document.body.getAttribute('data-live')") == "yes").then_some(()),
    );
    let revoke = http(
        prod.server.addr,
        "DELETE",
        "/cp/admin/tokens/on-call",
        Some(&prod.admin),
        None,
    );
    assert_eq!(revoke.status, 204, "{revoke:?}");
    let started = std::time::Instant::now();
    poll_until(
        "the open page ends its session",
        Duration::from_secs(15),
        || browser.url().contains("/ui/login").then_some(()),
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "within a few seconds: {:?}",
        started.elapsed()
    );
}

/// Keeps the screenshot where a developer finds it, and in `docs/` when
/// asked to.
fn save_screenshot(png: &[u8]) {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui.png");
    std::fs::write(&target, png).unwrap();
    if std::env::var("PINION_BLESS_SCREENSHOT").as_deref() == Ok("1") {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/ui.png");
        std::fs::write(docs, png).unwrap();
    }
}
