//! Test support: the real `pinion` binary, a real server on a free port with
//! a temporary database, a plain HTTP/1.1 client, and fault servers.
//!
//! Every byte the suite sees (server log lines, CLI stdout and stderr, HTTP
//! response bodies) passes through [`assert_no_secret`], which fails the test
//! if any token secret created in this process appears in it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Every secret this test process has created: API tokens (`pinion_…`)
/// and webhook signing secrets (`whsec_…`).
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Fails if `text` contains any secret, whole or as its part after the
/// prefix (a token's hex, a webhook secret's base64).
pub fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS.lock().unwrap().iter() {
        let bare = secret
            .trim_start_matches("pinion_")
            .trim_start_matches("whsec_");
        assert!(
            !text.contains(secret.as_str()) && !text.contains(bare),
            "a secret leaked into {what}: {text}"
        );
    }
}

/// Registers a string the suite must never see echoed (a wrong token sent on
/// purpose, say).
pub fn register_secret(secret: &str) {
    SECRETS.lock().unwrap().push(secret.to_owned());
}

pub fn digest(n: u32) -> String {
    format!("sha256:{n:064x}")
}

/// A binary command with no stray `PINION_*` or Actions variables inherited.
pub fn pinion() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pinion"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PINION_") || key.starts_with("GITHUB_") || key.starts_with("GITEA_") {
            command.env_remove(key);
        }
    }
    command.stdin(Stdio::null());
    command
}

/// Polls `check` every 50 ms until it gives a value; fails the test, naming
/// `what`, once `limit` has passed. The one polling loop of the suite.
pub fn poll_until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Polls until `check` holds (see [`poll_until`]).
pub fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    poll_until(what, limit, || check().then_some(()));
}

/// The CLI gate against one server with one token (in `PINION_TOKEN`): the
/// arguments every end-to-end test would otherwise spell out.
pub struct Gate<'a> {
    server: String,
    token: &'a str,
}

impl Gate<'_> {
    /// `pinion COMMAND --server URL --template T --digest D`, ready for more
    /// arguments.
    pub fn command(&self, command: &str, template: &str, digest: &str) -> Command {
        let mut cli = pinion();
        cli.args([command, "--server", &self.server])
            .args(["--template", template, "--digest", digest])
            .env("PINION_TOKEN", self.token);
        cli
    }

    pub fn promote(&self, template: &str, digest: &str, extra: &[&str]) -> Output {
        run(self.command("promote", template, digest).args(extra))
    }

    pub fn verify(&self, template: &str, digest: &str, extra: &[&str]) -> Output {
        run(self.command("verify", template, digest).args(extra))
    }
}

/// What a finished CLI run printed.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The last line on stderr: the one-line reason of a failure.
    pub fn reason(&self) -> &str {
        self.stderr.lines().last().unwrap_or_default()
    }
}

pub fn run(command: &mut Command) -> Output {
    let output = command.output().expect("run pinion");
    let result = Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert_no_secret("CLI stdout", &result.stdout);
    assert_no_secret("CLI stderr", &result.stderr);
    result
}

/// The PostgreSQL server the suite makes its databases on: the admin URL in
/// `PINION_TEST_POSTGRES_URL`, else the machine's own on 127.0.0.1:5432.
/// Panics, saying why, when it does not answer: a PostgreSQL test never
/// passes without having run (`cargo xtask test` sets everything up).
pub fn postgres_admin_url() -> String {
    let url = std::env::var("PINION_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let answers = Command::new("psql")
        .args([url.as_str(), "-Atqc", "SELECT 1"])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        answers,
        "this test needs PostgreSQL and none answers at PINION_TEST_POSTGRES_URL or 127.0.0.1:5432; \
         run `cargo xtask test`, which installs and starts one"
    );
    url
}

/// A temporary directory and one fresh database: a SQLite file in the
/// directory, or, when `PINION_TEST_ENGINE=postgres` (or for
/// [`Env::postgres`]), a PostgreSQL database created for it and dropped after.
pub struct Env {
    pub dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

impl Env {
    /// A database of the engine the suite runs on.
    pub fn new() -> Env {
        if std::env::var("PINION_TEST_ENGINE").as_deref() == Ok("postgres") {
            Env::postgres()
        } else {
            Env {
                dir: tempfile::tempdir().unwrap(),
                postgres: None,
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// A SQLite database, whatever engine the suite runs on.
    pub fn sqlite() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            postgres: None,
        }
    }

    /// The SQLite file's path (panics for PostgreSQL).
    pub fn sqlite_path(&self) -> PathBuf {
        assert!(self.postgres.is_none(), "a SQLite environment");
        self.dir.path().join("pinion.db")
    }

    /// A PostgreSQL database, whatever engine the suite runs on.
    pub fn postgres() -> Env {
        let admin = postgres_admin_url();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "pinion_it_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let created = Command::new("psql")
            .args(["-q", &admin, "-c", &format!("CREATE DATABASE {name}")])
            .output()
            .expect("psql");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
        Env {
            dir: tempfile::tempdir().unwrap(),
            postgres: Some((admin, name)),
        }
    }

    pub fn database(&self) -> String {
        match &self.postgres {
            Some((admin, name)) => {
                let base = admin
                    .rsplit_once('/')
                    .map_or(admin.as_str(), |(base, _)| base);
                format!("{base}/{name}")
            }
            None => format!("sqlite://{}", self.dir.path().join("pinion.db").display()),
        }
    }

    pub fn add_template(&self, name: &str, repository: &str) {
        let out = run(pinion()
            .args([
                "template",
                "add",
                name,
                "--repository",
                repository,
                "--database",
            ])
            .arg(self.database()));
        assert_eq!(out.code, 0, "{out:?}");
    }

    /// Creates a token and returns its secret (registered as a secret).
    pub fn token(&self, name: &str, scope: &str, templates: &[&str]) -> String {
        let mut command = pinion();
        command.args([
            "token",
            "create",
            "--name",
            name,
            "--scope",
            scope,
            "--database",
        ]);
        command.arg(self.database());
        for template in templates {
            command.args(["--template", template]);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let secret = stdout.trim().to_owned();
        assert!(
            secret.starts_with("pinion_"),
            "only the secret on stdout: {stdout:?}"
        );
        assert_eq!(stdout, format!("{secret}\n"), "only the secret on stdout");
        SECRETS.lock().unwrap().push(secret.clone());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_no_secret("token create stderr", &stderr);
        secret
    }

    pub fn start(&self) -> Server {
        Server::start(&self.database(), &[])
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.postgres {
            let _ = Command::new("psql")
                .args([
                    "-q",
                    admin.as_str(),
                    "-c",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ])
                .output();
        }
    }
}

/// A `pinion serve` process on a free port.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(database: &str, env: &[(&str, &str)]) -> Server {
        Server::start_on("127.0.0.1:0", database, env)
    }

    /// A server with flags of its own after `serve`'s.
    pub fn start_with_args(database: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
        Server::launch("127.0.0.1:0", database, env, args)
    }

    /// A server on a given address (to come back on the same port).
    pub fn start_on(listen: &str, database: &str, env: &[(&str, &str)]) -> Server {
        Server::launch(listen, database, env, &[])
    }

    fn launch(listen: &str, database: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
        let mut command = pinion();
        command
            .args(["serve", "--listen", listen, "--database", database])
            .args(args)
            .env("PINION_REGISTRY_CHECK", "off")
            // The suite's receivers listen on loopback; the tests of the
            // refusal turn this off again.
            .env("PINION_WEBHOOK_ALLOW_PRIVATE", "true");
        // PostgreSQL has no default key file: every replica of the suite
        // shares one, as every replica of a deployment must.
        if database.starts_with("postgres") {
            command.env("PINION_SECRET_KEY_FILE", shared_key_file());
        }
        command.envs(env.iter().copied());
        // `PINION_SECRET_KEY_FILE` given empty: a server without a key.
        if env
            .iter()
            .any(|(name, value)| *name == "PINION_SECRET_KEY_FILE" && value.is_empty())
        {
            command.env_remove("PINION_SECRET_KEY_FILE");
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pinion serve");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (found, listening) = std::sync::mpsc::channel();
        let collected = logs.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let announced = line
                    .split("listening on http://")
                    .nth(1)
                    .or_else(|| line.split("listening on https://").nth(1));
                if let Some(addr) = announced {
                    // Text or JSON logs: the address ends where its
                    // characters do.
                    let addr: String = addr
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect();
                    let _ = found.send(addr);
                }
                collected.lock().unwrap().push(line);
            }
        });
        let addr = listening
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("server did not start: {:?}", logs.lock().unwrap()));
        Server {
            child,
            addr: addr.parse().unwrap(),
            logs,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The CLI gate against this server, with `token`.
    pub fn gate<'a>(&self, token: &'a str) -> Gate<'a> {
        Gate {
            server: self.url(),
            token,
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no chance to flush or finish anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the process to exit; returns its code.
    pub fn terminate(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        poll_until(
            "the server's exit on SIGTERM",
            Duration::from_secs(10),
            || self.child.try_wait().unwrap(),
        )
        .code()
    }

    pub fn get(&self, path: &str, token: &str) -> Response {
        http(self.addr, "GET", path, Some(token), None)
    }

    pub fn post(&self, path: &str, token: &str, body: &str) -> Response {
        http(self.addr, "POST", path, Some(token), Some(body.as_bytes()))
    }

    /// All history entries of one template, oldest first, read page by page.
    pub fn history(&self, token: &str, template: &str) -> Vec<serde_json::Value> {
        let mut entries = Vec::new();
        let mut before = String::new();
        loop {
            let response = self.get(
                &format!(
                    "/cp/admin/runtime-image/history?template_name={template}&limit=1000{before}"
                ),
                token,
            );
            assert_eq!(response.status, 200, "{response:?}");
            let page = response.json();
            entries.extend(page["history"].as_array().unwrap().iter().cloned());
            match page["next_before"].as_i64() {
                Some(next) => before = format!("&before={next}"),
                None => break,
            }
        }
        entries.reverse();
        entries
    }

    /// The digest `(template, region)` is pinned to, read through the API.
    pub fn pinned(&self, token: &str, template: &str, region: &str) -> Option<String> {
        let response = self.get(
            &format!("/cp/admin/runtime-image?template_name={template}&region={region}"),
            token,
        );
        assert_eq!(response.status, 200, "{response:?}");
        response.json()["pins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|pin| pin["template_name"] == template && pin["region"] == region)
            .map(|pin| pin["image_digest"].as_str().unwrap().to_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !thread::panicking() {
            for line in self.logs.lock().unwrap().iter() {
                assert_no_secret("server log", line);
            }
        }
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("not JSON ({err}): {self:?}"))
    }

    /// The contract's error code, asserting the body has the contract's shape.
    pub fn error_code(&self) -> String {
        let json = self.json();
        let error = json["error"]
            .as_object()
            .unwrap_or_else(|| panic!("no error body: {self:?}"));
        assert_eq!(error.len(), 2, "error has code and message: {self:?}");
        let message = error["message"].as_str().unwrap();
        assert!(
            !message.is_empty() && !message.contains('\n'),
            "one-line message: {self:?}"
        );
        error["code"].as_str().unwrap().to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A minimal HTTP/1.1 client over a raw socket, so tests control every byte
/// they send (wrong methods, broken JSON, huge bodies).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Response {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    raw_http(addr, head.as_bytes(), body.unwrap_or_default())
}

/// A POST that returns `None` instead of failing when the server is gone
/// (killed mid-request on purpose).
pub fn try_post(addr: SocketAddr, path: &str, token: &str, body: &str) -> Option<Response> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    text.contains("\r\n\r\n").then(|| parse_response(&raw))
}

/// Sends `request` whole, then shuts the write side of the connection (as
/// `curl` with a body from a pipe, or a proxy, may) and reads the answer.
pub fn half_closed_request(addr: SocketAddr, request: &[u8]) -> Option<Response> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let answered = String::from_utf8_lossy(&raw).contains("\r\n\r\n");
    answered.then(|| {
        let response = parse_response(&raw);
        assert_no_secret("HTTP response", &response.body);
        response
    })
}

pub fn raw_http(addr: SocketAddr, head: &[u8], body: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(head).unwrap();
    // The server may answer (413) and stop reading before a huge body is
    // sent; the answer is what matters, so a failed write is not an error.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let response = parse_response(&raw);
    assert_no_secret("HTTP response", &response.body);
    response
}

fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(key, value)| {
        key.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// A port with nothing listening on it.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// How a [`FaultServer`] misbehaves. This is fault injection, not a stand-in
/// for Pinion: it lets tests see the CLI face servers that fail or lie.
#[derive(Clone)]
pub enum Fault {
    /// Answer every request with this status, content type and body.
    Answer(u16, &'static str, String),
    /// Accept the connection and never answer.
    Hang,
    /// Redirect to this URL.
    Redirect(String),
    /// A registry that lies: answers every request with 200, this body, and a
    /// `Docker-Content-Digest` that is not the body's.
    LyingRegistry(String, String),
    /// Answer POSTs with the first (status, JSON body), everything else with
    /// the second: a control plane that says one thing about a write and
    /// another when read.
    ByMethod((u16, String), (u16, String)),
    /// Answer 200 with the JSON body listed for the request's path (without
    /// its query), 404 for any other: a server that lies in well-formed
    /// answers.
    ByPath(Vec<(&'static str, String)>),
    /// Answer 200 with this many bytes of JSON whitespace and no length: a
    /// neighbour that would make a reader hold all of it.
    Huge(usize),
}

/// A fault-injecting HTTP server on a free port; it records what it received.
pub struct FaultServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
}

impl FaultServer {
    pub fn start(fault: Fault) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let (seen, counted) = (requests.clone(), count.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let fault = fault.clone();
                let (seen, counted) = (seen.clone(), counted.clone());
                thread::spawn(move || {
                    let head = read_head(&mut stream);
                    // Read the body too before answering: closing with
                    // unread bytes would reset the connection under the
                    // answer, a fault of its own that these are not about.
                    read_body(&mut stream, &head);
                    let is_post = head.starts_with("POST ");
                    let path = head
                        .split(' ')
                        .nth(1)
                        .unwrap_or_default()
                        .split('?')
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    seen.lock().unwrap().push(head);
                    counted.fetch_add(1, Ordering::SeqCst);
                    match fault {
                        Fault::Hang => thread::sleep(Duration::from_secs(120)),
                        Fault::Answer(status, content_type, body) => {
                            let _ = write!(
                                stream,
                                "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                        }
                        Fault::LyingRegistry(body, claimed) => {
                            let _ = write!(
                                stream,
                                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nDocker-Content-Digest: {claimed}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                        }
                        Fault::ByMethod(post, other) => {
                            let (status, body) = if is_post { post } else { other };
                            let _ = write!(
                                stream,
                                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                        }
                        Fault::ByPath(bodies) => {
                            let (status, body) = bodies
                                .iter()
                                .find(|(at, _)| *at == path)
                                .map_or((404, String::new()), |(_, body)| (200, body.clone()));
                            let _ = write!(
                                stream,
                                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                        }
                        Fault::Huge(size) => {
                            let _ = write!(
                                stream,
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
                            );
                            let chunk = vec![b' '; 64 * 1024];
                            let mut sent = 0;
                            while sent < size {
                                if stream.write_all(&chunk).is_err() {
                                    break;
                                }
                                sent += chunk.len();
                            }
                        }
                        Fault::Redirect(location) => {
                            let _ = write!(
                                stream,
                                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            );
                        }
                    }
                });
            }
        });
        FaultServer {
            addr,
            requests,
            count,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// The request heads received (method, path, headers).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn read_body(stream: &mut TcpStream, head: &str) {
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length.min(1 << 20)];
    let _ = stream.read_exact(&mut body);
}

fn read_head(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A populated environment: a template `codex` (and `hermes`), tokens of each
/// kind, and a running server.
pub struct Fixture {
    /// Declared first so it stops before its database goes away.
    pub server: Server,
    pub env: Env,
    pub admin: String,
    pub promote: String,
    pub read: String,
}

impl Fixture {
    pub fn new() -> Fixture {
        let env = Env::new();
        env.add_template(
            "codex",
            "registry.example.com/team/workspace-template-codex",
        );
        env.add_template(
            "hermes",
            "registry.example.com/team/workspace-template-hermes",
        );
        let admin = env.token("platform", "admin", &[]);
        let promote = env.token("ci", "promote", &[]);
        let read = env.token("provisioner", "read", &[]);
        let server = env.start();
        Fixture {
            env,
            server,
            admin,
            promote,
            read,
        }
    }

    pub fn path(&self) -> &Path {
        self.env.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.env.dir.path().join(name)
    }
}

/// A secret key file for PostgreSQL servers, one for the whole run.
pub fn shared_key_file() -> PathBuf {
    static KEY: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pinion.key");
        let key: String = (0..32)
            .map(|n: u32| {
                format!(
                    "{:02x}",
                    n.wrapping_mul(97).wrapping_add(std::process::id()) % 256
                )
            })
            .collect();
        std::fs::write(&path, key).unwrap();
        (dir, path)
    })
    .1
    .clone()
}

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A real HTTP receiver for webhooks on a free port: it answers each
/// request with the next of its scripted answers (the last one repeats)
/// and keeps everything it received.
pub struct Receiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

/// What a [`Receiver`] answers: a status, extra header lines, a body.
#[derive(Debug, Clone)]
pub struct Answer(pub u16, pub &'static str, pub &'static str);

impl Receiver {
    pub fn start(answers: Vec<Answer>) -> Receiver {
        Receiver::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), answers)
    }

    pub fn start_on(listener: TcpListener, answers: Vec<Answer>) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Received>>> = Arc::new(Mutex::new(Vec::new()));
        let seen = received.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let head = read_head(&mut stream);
                let mut lines = head.lines();
                let request_line = lines.next().unwrap_or_default().to_owned();
                let mut parts = request_line.split(' ');
                let method = parts.next().unwrap_or_default().to_owned();
                let path = parts.next().unwrap_or_default().to_owned();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|line| line.split_once(':'))
                    .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
                    .collect();
                let length = headers
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, value)| value.parse::<usize>().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                let _ = stream.read_exact(&mut body);
                let answer = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(Received {
                        at: Instant::now(),
                        method,
                        path,
                        headers,
                        body,
                    });
                    answers[(seen.len() - 1).min(answers.len() - 1)].clone()
                };
                let Answer(status, extra, text) = answer;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        Receiver { addr, received }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until it has received `count` requests.
    pub fn wait_for(&self, count: usize, limit: Duration) -> Vec<Received> {
        poll_until(
            &format!("{count} deliveries at the receiver"),
            limit,
            || {
                let received = self.received();
                (received.len() >= count).then_some(received)
            },
        )
    }
}

/// HMAC-SHA256, written here from its definition (RFC 2104) rather than
/// taken from the server's code, so a signature check is independent.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Checks a delivery's Standard Webhooks signature with the secret the
/// server showed when the webhook was made.
pub fn signature_holds(secret: &str, delivery: &Received) -> bool {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .expect("base64");
    let id = delivery.header("webhook-id").unwrap_or_default();
    let timestamp = delivery.header("webhook-timestamp").unwrap_or_default();
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(&delivery.body);
    let expected = format!("v1,{}", engine.encode(hmac_sha256(&key, &signed)));
    delivery
        .header("webhook-signature")
        .unwrap_or_default()
        .split(' ')
        .any(|signature| signature == expected)
}

/// A Server-Sent Events reader over a raw socket.
pub struct EventStream {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// Every comment line read (keep-alives, last words).
    pub comments: Vec<String>,
}

/// One event of a stream: its `id`, `event` and parsed `data`.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub id: i64,
    pub kind: String,
    pub data: serde_json::Value,
    pub raw: String,
}

impl EventStream {
    /// Opens `/cp/events` as a stream, with `Last-Event-ID` if given and
    /// `query` appended; panics unless the answer is 200.
    pub fn open(addr: SocketAddr, token: &str, last_id: Option<i64>, query: &str) -> EventStream {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let last = last_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        // HTTP/1.0: the body comes unchunked, the stream's bytes as they are.
        write!(
            stream,
            "GET /cp/events{query} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n{last}\r\n"
        )
        .unwrap();
        let mut events = EventStream {
            stream,
            buffer: Vec::new(),
            comments: Vec::new(),
        };
        let head = events.until(b"\r\n\r\n");
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.split(' ').nth(1) == Some("200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("text/event-stream"),
            "{head}"
        );
        events
    }

    /// Reads until `end`; returns what came before it (and drops `end`).
    fn until(&mut self, end: &[u8]) -> Vec<u8> {
        loop {
            if let Some(at) = self.buffer.windows(end.len()).position(|w| w == end) {
                let taken: Vec<u8> = self.buffer.drain(..at + end.len()).collect();
                return taken[..at].to_vec();
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = self.stream.read(&mut chunk).expect("the stream stays open");
            assert!(read > 0, "the stream ended: {:?}", self.comments);
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    /// The next event, skipping comments (kept) and chunk framing.
    pub fn next_event(&mut self) -> StreamEvent {
        loop {
            match self.next_message() {
                Some(event) => return event,
                None => continue,
            }
        }
    }

    /// The next message: an event, or `None` for a comment or a bare field.
    pub fn next_message(&mut self) -> Option<StreamEvent> {
        let block = String::from_utf8_lossy(&self.until(b"\n\n")).into_owned();
        let mut id = None;
        let mut kind = None;
        let mut data = None;
        for line in block.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(comment) = line.strip_prefix(':') {
                self.comments.push(comment.trim().to_owned());
            } else if let Some(value) = line.strip_prefix("id: ") {
                id = value.parse::<i64>().ok();
            } else if let Some(value) = line.strip_prefix("event: ") {
                kind = Some(value.to_owned());
            } else if let Some(value) = line.strip_prefix("data: ") {
                data = Some(value.to_owned());
            }
        }
        let raw = data?;
        assert_no_secret("an event stream", &raw);
        Some(StreamEvent {
            id: id.expect("an event has an id"),
            kind: kind.expect("an event has a type"),
            data: serde_json::from_str(&raw).expect("event data is JSON"),
            raw,
        })
    }

    /// Reads everything until the server closes the stream.
    pub fn rest(&mut self) -> String {
        let mut rest = std::mem::take(&mut self.buffer);
        let _ = self.stream.read_to_end(&mut rest);
        String::from_utf8_lossy(&rest).into_owned()
    }
}
