//! The page over HTTP, without a browser: the login redirect, the session
//! cookie's flags, that no token ever reaches a page, a URL or a cookie,
//! sessions stored hashed and ended by sign-out, expiry and revocation,
//! CSRF on every form, hostile names as 4xx pages, HTML escaping, and a
//! peer's column beside this server's (with an unreachable peer shown as
//! such, never as empty).

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{
    Env, Response, Server, assert_no_secret, closed_port, eventually, http, raw_http,
    register_secret,
};

const PROMOTE: &str = "/cp/admin/runtime-image/promote";

/// A digest whose short form is `n` twelve times over.
pub fn digest(n: u32) -> String {
    format!("sha256:{}", format!("{n:x}").repeat(64))
}

/// A page request, with the session cookie if there is one.
pub fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Response {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(cookie) = cookie {
        head.push_str(&format!("Cookie: pinion_session={cookie}\r\n"));
    }
    head.push_str("\r\n");
    checked(raw_http(addr, head.as_bytes(), b""))
}

/// A form post, as a browser sends it.
pub fn post_form(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    fields: &[(&str, &str)],
) -> Response {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(cookie) = cookie {
        head.push_str(&format!("Cookie: pinion_session={cookie}\r\n"));
    }
    head.push_str("\r\n");
    checked(raw_http(addr, head.as_bytes(), body.as_bytes()))
}

/// Every answer of the page: no secret in its headers (the body is swept
/// by the client already), and the page's hardening headers.
fn checked(response: Response) -> Response {
    for (name, value) in &response.headers {
        assert_no_secret(&format!("header {name}"), value);
    }
    if response
        .header("content-type")
        .is_some_and(|kind| kind.starts_with("text/html"))
        || response.status == 303
    {
        let csp = response
            .header("content-security-policy")
            .unwrap_or_default();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "a strict CSP on every page answer: {response:?}"
        );
    }
    response
}

/// Signs in with `token`; returns the session id from the cookie, checking
/// its flags.
pub fn login(addr: SocketAddr, token: &str) -> String {
    let answer = post_form(
        addr,
        "/ui/login",
        None,
        &[("token", token), ("next", "/ui")],
    );
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(answer.header("location"), Some("/ui"));
    let cookie = answer
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no cookie: {answer:?}"))
        .to_owned();
    let (pair, flags) = cookie.split_once(';').unwrap();
    let id = pair.strip_prefix("pinion_session=").unwrap().to_owned();
    register_secret(&id);
    let flags: Vec<&str> = flags.split(';').map(str::trim).collect();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(flags.contains(&flag), "cookie flag {flag}: {cookie}");
    }
    assert!(
        !flags.contains(&"Secure"),
        "no Secure flag on plain HTTP (the browser would drop it): {cookie}"
    );
    assert!(
        flags.iter().any(|flag| flag.starts_with("Max-Age=")),
        "{cookie}"
    );
    assert!(
        !cookie.contains(token.trim_start_matches("pinion_")),
        "the cookie holds no token"
    );
    id
}

/// The CSRF token of a page's forms.
pub fn csrf(body: &str) -> String {
    body.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF field in: {body}"))
        .to_owned()
}

struct Site {
    env: Env,
    server: Server,
    admin: String,
    ci: String,
    read: String,
}

impl Site {
    fn new(env_vars: &[(&str, &str)]) -> Site {
        let env = Env::new();
        let admin = env.token("platform", "admin", &[]);
        let ci = env.token("ci", "promote", &[]);
        let read = env.token("viewer", "read", &[]);
        let server = Server::start(&env.database(), env_vars);
        for template in ["codex", "hermes"] {
            let put = http(
                server.addr,
                "PUT",
                &format!("/cp/admin/runtimes/{template}"),
                Some(&admin),
                Some(br#"{"image":null}"#),
            );
            assert!(put.status == 201, "{put:?}");
        }
        Site {
            env,
            server,
            admin,
            ci,
            read,
        }
    }

    fn promote(&self, template: &str, region: &str, n: u32, notes: &str) {
        let body = serde_json::json!({
            "template_name": template,
            "region": region,
            "image_digest": digest(n),
            "notes": notes,
            "git_sha": format!("{n:x}").repeat(40),
            "ci_run_url": format!("https://ci.example.com/team/codex/actions/runs/{n}"),
        })
        .to_string();
        let answer = self.server.post(PROMOTE, &self.ci, &body);
        assert_eq!(answer.status, 201, "{answer:?}");
    }
}

#[test]
fn without_a_session_every_page_sends_you_to_sign_in() {
    let site = Site::new(&[]);
    site.promote("codex", "global", 1, "first");
    for (path, next) in [
        ("/ui", "%2Fui"),
        ("/ui/pins/codex/global", "%2Fui%2Fpins%2Fcodex%2Fglobal"),
        ("/ui?state=stale", "%2Fui%3Fstate%3Dstale"),
    ] {
        let answer = get(site.server.addr, path, None);
        assert_eq!(answer.status, 303, "{path}: {answer:?}");
        assert_eq!(
            answer.header("location"),
            Some(format!("/ui/login?next={next}").as_str()),
            "{path}"
        );
        // A made-up or malformed cookie is no session either.
        for cookie in [
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "x",
            "../../etc",
        ] {
            let answer = get(site.server.addr, path, Some(cookie));
            assert_eq!(
                answer.status, 303,
                "{path} with cookie {cookie}: {answer:?}"
            );
        }
    }
    let form = get(
        site.server.addr,
        "/ui/login?next=%2Fui%2Fpins%2Fcodex%2Fglobal",
        None,
    );
    assert_eq!(form.status, 200);
    assert!(
        form.body.contains(r#"<label for="token">"#),
        "{}",
        form.body
    );
    assert!(form.body.contains(r#"type="password""#));
    assert!(form.body.contains(r#"value="/ui/pins/codex/global""#));
    // A next page elsewhere is not followed.
    for next in [
        "https://evil.example/",
        "//evil.example/ui",
        "/ui/../cp",
        "/\\evil",
    ] {
        let answer = post_form(
            site.server.addr,
            "/ui/login",
            None,
            &[("token", &site.read), ("next", next)],
        );
        assert_eq!(answer.status, 303, "{answer:?}");
        assert_eq!(answer.header("location"), Some("/ui"), "next {next}");
    }
    // A sign-in posted from another site is refused (login CSRF).
    let body = format!("token={}", site.read);
    let head = format!(
        "POST /ui/login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nOrigin: https://evil.example\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len(),
        addr = site.server.addr
    );
    let forged = checked(raw_http(site.server.addr, head.as_bytes(), body.as_bytes()));
    assert_eq!(forged.status, 403, "{forged:?}");
    assert!(forged.header("set-cookie").is_none());
    let cross = head.replace(
        "Origin: https://evil.example",
        "Origin: null\r\nSec-Fetch-Site: cross-site",
    );
    let forged = checked(raw_http(
        site.server.addr,
        cross.as_bytes(),
        body.as_bytes(),
    ));
    assert_eq!(forged.status, 403, "{forged:?}");
    // From this server itself: fine.
    let head = head.replace(
        "https://evil.example",
        &format!("http://{}", site.server.addr),
    );
    let own = checked(raw_http(site.server.addr, head.as_bytes(), body.as_bytes()));
    assert_eq!(own.status, 303, "{own:?}");
    // The event stream of the page: 401 without a session.
    let events = get(site.server.addr, "/ui/events", None);
    assert_eq!(events.status, 401, "{events:?}");
}

#[test]
fn a_wrong_token_signs_nobody_in_and_is_never_echoed() {
    let site = Site::new(&[]);
    let wrong = "pinion_0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";
    register_secret(wrong);
    let answer = post_form(site.server.addr, "/ui/login", None, &[("token", wrong)]);
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.header("set-cookie").is_none(), "{answer:?}");
    assert!(
        answer.body.contains("unknown, revoked or expired"),
        "{}",
        answer.body
    );
    let empty = post_form(site.server.addr, "/ui/login", None, &[("token", "  ")]);
    assert_eq!(empty.status, 422, "{empty:?}");
    // A revoked token signs nobody in.
    let gone = site.env.token("gone", "read", &[]);
    let revoke = http(
        site.server.addr,
        "DELETE",
        "/cp/admin/tokens/gone",
        Some(&site.admin),
        None,
    );
    assert_eq!(revoke.status, 204, "{revoke:?}");
    let answer = post_form(site.server.addr, "/ui/login", None, &[("token", &gone)]);
    assert_eq!(answer.status, 401, "{answer:?}");
}

#[test]
fn the_matrix_shows_pins_escapes_notes_and_keeps_tokens_out() {
    let site = Site::new(&[]);
    site.promote("codex", "global", 1, "first");
    site.promote("codex", "eu", 2, "<script>alert('pwned')</script>");
    site.promote("hermes", "global", 3, "ok");
    let session = login(site.server.addr, &site.read);
    let page = get(site.server.addr, "/ui", Some(&session));
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(page.header("cache-control"), Some("no-store"));
    for n in [1, 2, 3] {
        let short = &digest(n)["sha256:".len().."sha256:".len() + 12];
        assert!(
            page.body.contains(short),
            "short digest {short} on the page"
        );
    }
    assert!(
        page.body
            .contains(r#"<th scope="row"><a href="/ui?template=codex">codex</a></th>"#)
    );
    assert!(page.body.contains("by ci"), "who moved it");
    // The commit, linked to the CI run that moved the pin.
    assert!(
        page.body.contains(r#"<a href="https://ci.example.com/team/codex/actions/runs/2" rel="noopener noreferrer" title="its CI run"><code>2222222</code></a>"#),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("not checked"),
        "drift said, not assumed fine"
    );
    // The pin page shows the notes escaped.
    let pin = get(site.server.addr, "/ui/pins/codex/eu", Some(&session));
    assert_eq!(pin.status, 200, "{pin:?}");
    assert!(
        pin.body
            .contains("&lt;script&gt;alert('pwned')&lt;/script&gt;"),
        "{}",
        pin.body
    );
    assert!(!pin.body.contains("<script>alert"), "notes escaped");
    // A read session has no form that changes anything.
    assert!(
        !pin.body.contains("/rollback\""),
        "no rollback form for read: {}",
        pin.body
    );
    assert!(!pin.body.contains("/hold\""), "no hold form for read");
    // Filters are links; a template filter keeps only that template.
    let filtered = get(site.server.addr, "/ui?template=hermes", Some(&session));
    assert_eq!(filtered.status, 200);
    assert!(filtered.body.contains(&digest(3)[7..19]));
    assert!(!filtered.body.contains(&digest(1)[7..19]));
    // The assets come from the server, and nothing else is loaded.
    for asset in ["/ui/assets/pinion.css", "/ui/assets/live.js"] {
        let answer = get(site.server.addr, asset, None);
        assert_eq!(answer.status, 200, "{asset}");
        assert!(page.body.contains(asset));
    }
    // Whatever the page loads (scripts, stylesheets, images) is the
    // server's own; links out (a CI run) load nothing.
    for loaded in page.body.split(" src=\"").skip(1) {
        assert!(loaded.starts_with('/'), "an external asset: {loaded:.60}");
    }
    for tag in page.body.split("<link ").skip(1) {
        let href = tag.split("href=\"").nth(1).unwrap_or_default();
        assert!(href.starts_with('/'), "an external stylesheet: {tag:.60}");
    }
    // The database keeps no session id, only its hash.
    if !site.env.is_postgres() {
        let bytes = std::fs::read(site.env.sqlite_path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(&session), "the session id is not stored");
    }
    for line in site.server.logs() {
        assert_no_secret("server log", &line);
        assert!(
            !line.contains(&session),
            "the session id is not logged: {line}"
        );
    }
}

#[test]
fn hostile_names_in_page_urls_are_4xx_pages() {
    let site = Site::new(&[]);
    site.promote("codex", "global", 1, "first");
    let session = login(site.server.addr, &site.admin);
    for path in [
        "/ui/pins/%3Cscript%3E/global",
        "/ui/pins/codex/%3Cimg%20src%3Dx%3E",
        "/ui/pins/..%2F..%2Fetc/global",
        "/ui/pins/codex/nowhere",
        "/ui/pins/CODEX/global",
        "/ui/pins/codex",
        "/ui/pins/codex/global/extra",
        "/ui?template=%3Cscript%3E",
        "/ui?state=%3Cb%3E",
        "/ui/assets/..%2F..%2Fetc%2Fpasswd",
        "/ui/pins/%FF%FE/global",
    ] {
        let answer = get(site.server.addr, path, Some(&session));
        assert!(
            (400..500).contains(&answer.status),
            "{path}: {} {}",
            answer.status,
            answer.body
        );
        assert!(!answer.body.contains("<script>"), "{path} reflected markup");
        assert!(!answer.body.contains("<img"), "{path} reflected markup");
    }
}

#[test]
fn forms_need_the_scope_the_csrf_token_and_a_reason() {
    let site = Site::new(&[]);
    site.promote("codex", "global", 1, "first");
    site.promote("codex", "global", 2, "second");
    let addr = site.server.addr;
    let admin = login(addr, &site.admin);
    let page = get(addr, "/ui/pins/codex/global", Some(&admin));
    assert!(
        page.body
            .contains(r#"action="/ui/pins/codex/global/rollback""#),
        "{}",
        page.body
    );
    let token = csrf(&page.body);
    let rollback = "/ui/pins/codex/global/rollback";
    // Forged: no CSRF token, a wrong one, another session's.
    let other = login(addr, &site.admin);
    let other_csrf = csrf(&get(addr, "/ui", Some(&other)).body);
    for forged in [None, Some("nope"), Some(other_csrf.as_str())] {
        let mut fields = vec![("reason", "forged"), ("to_digest", "")];
        if let Some(token) = forged {
            fields.push(("csrf", token));
        }
        let answer = post_form(addr, rollback, Some(&admin), &fields);
        assert_eq!(answer.status, 403, "{forged:?}: {answer:?}");
        assert!(answer.body.contains("CSRF"), "{}", answer.body);
    }
    assert_eq!(
        site.server.pinned(&site.read, "codex", "global"),
        Some(digest(2)),
        "nothing moved"
    );
    // No reason: refused.
    let answer = post_form(
        addr,
        rollback,
        Some(&admin),
        &[("csrf", &token), ("reason", " ")],
    );
    assert_eq!(answer.status, 422, "{answer:?}");
    // The refusals are audited like the API's.
    let audit = site.server.get("/cp/admin/audit", &site.admin).json();
    let refused = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["action"] == "rollback" && entry["status"] == 403)
        .count();
    assert!(refused >= 3, "the forged posts are in the audit: {audit}");
    // A read session gets 403 even with its own CSRF token.
    let reader = login(addr, &site.read);
    let reader_csrf = csrf(&get(addr, "/ui", Some(&reader)).body);
    let answer = post_form(
        addr,
        rollback,
        Some(&reader),
        &[("csrf", &reader_csrf), ("reason", "try")],
    );
    assert_eq!(answer.status, 403, "{answer:?}");
    // No session at all: to the login form, nothing done.
    let answer = post_form(addr, rollback, None, &[("csrf", &token), ("reason", "try")]);
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(
        site.server.pinned(&site.read, "codex", "global"),
        Some(digest(2))
    );
    // The real thing: back to digest 1, held, with the reason in history.
    let answer = post_form(
        addr,
        rollback,
        Some(&admin),
        &[
            ("csrf", &token),
            ("reason", "bad build"),
            ("to_digest", &digest(1)),
            ("hold", "1"),
        ],
    );
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(answer.header("location"), Some("/ui/pins/codex/global"));
    assert_eq!(
        site.server.pinned(&site.read, "codex", "global"),
        Some(digest(1))
    );
    let history = site.server.history(&site.read, "codex");
    let entry = history
        .iter()
        .find(|entry| entry["action"] == "rollback")
        .unwrap_or_else(|| panic!("no rollback in {history:?}"));
    assert_eq!(entry["notes"], "bad build");
    assert_eq!(entry["actor"], "platform");
    assert_eq!(entry["to_digest"], digest(1).as_str());
    assert!(
        history.iter().any(|entry| entry["action"] == "hold"),
        "held in the same move"
    );
    let page = get(addr, "/ui/pins/codex/global", Some(&admin));
    assert!(page.body.contains("bad build"));
    assert!(
        page.body
            .contains(r#"action="/ui/pins/codex/global/release""#),
        "held: release offered"
    );
    // Release, then hold again, through the forms.
    let token = csrf(&page.body);
    let answer = post_form(
        addr,
        "/ui/pins/codex/global/release",
        Some(&admin),
        &[("csrf", &token), ("reason", "fixed")],
    );
    assert_eq!(answer.status, 303, "{answer:?}");
    let answer = post_form(
        addr,
        "/ui/pins/codex/global/hold",
        Some(&admin),
        &[("csrf", &token), ("reason", "freeze")],
    );
    assert_eq!(answer.status, 303, "{answer:?}");
    let pins = site
        .server
        .get("/cp/admin/runtime-image?template_name=codex", &site.read)
        .json();
    assert_eq!(pins["pins"][0]["hold"]["reason"], "freeze", "{pins}");
    // The CI token may roll back too (promote scope), but not a template it
    // may not use.
    let codex_only = site.env.token("codex-ci", "promote", &["codex"]);
    site.promote("hermes", "global", 5, "h1");
    site.promote("hermes", "global", 6, "h2");
    let limited = login(addr, &codex_only);
    let limited_csrf = csrf(&get(addr, "/ui", Some(&limited)).body);
    let answer = post_form(
        addr,
        "/ui/pins/hermes/global/rollback",
        Some(&limited),
        &[("csrf", &limited_csrf), ("reason", "no")],
    );
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(
        site.server.pinned(&site.read, "hermes", "global"),
        Some(digest(6))
    );
    let hidden = get(addr, "/ui", Some(&limited));
    assert!(
        !hidden.body.contains(&digest(6)[7..19]),
        "a restricted session sees only its templates"
    );
}

#[test]
fn sign_out_expiry_and_revocation_end_sessions() {
    let site = Site::new(&[("PINION_SESSION_LIFETIME", "3s")]);
    site.promote("codex", "global", 1, "first");
    let addr = site.server.addr;
    // Sign out: the session is gone, also for a copy of the cookie.
    let session = login(addr, &site.read);
    let page = get(addr, "/ui", Some(&session));
    assert_eq!(page.status, 200);
    let forged = post_form(addr, "/ui/logout", Some(&session), &[]);
    assert_eq!(
        forged.status, 403,
        "sign-out needs the CSRF token too: {forged:?}"
    );
    let out = post_form(
        addr,
        "/ui/logout",
        Some(&session),
        &[("csrf", &csrf(&page.body))],
    );
    assert_eq!(out.status, 303, "{out:?}");
    assert_eq!(out.header("location"), Some("/ui/login"));
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(get(addr, "/ui", Some(&session)).status, 303, "signed out");
    // Expiry: the lifetime is 3 s here.
    let session = login(addr, &site.read);
    assert_eq!(get(addr, "/ui", Some(&session)).status, 200);
    eventually("the session expires", Duration::from_secs(10), || {
        get(addr, "/ui", Some(&session)).status == 303
    });
    // Revocation: the token's sessions end with it.
    let made = http(
        addr,
        "POST",
        "/cp/admin/tokens",
        Some(&site.admin),
        Some(br#"{"name":"doomed","scope":"read"}"#),
    );
    assert_eq!(made.status, 201, "{made:?}");
    let doomed = made.json()["secret"].as_str().unwrap().to_owned();
    register_secret(&doomed);
    let session = login(addr, &doomed);
    assert_eq!(get(addr, "/ui", Some(&session)).status, 200);
    let revoke = http(
        addr,
        "DELETE",
        "/cp/admin/tokens/doomed",
        Some(&site.admin),
        None,
    );
    assert_eq!(revoke.status, 204, "{revoke:?}");
    assert_eq!(
        get(addr, "/ui", Some(&session)).status,
        303,
        "revoked: signed out at once"
    );
}

#[test]
fn peers_columns_mark_disagreement_and_an_unreachable_peer() {
    let staging = Site::new(&[]);
    staging.promote("codex", "global", 1, "s");
    staging.promote("hermes", "global", 3, "s");
    let prod_env = Env::new();
    let prod_admin = prod_env.token("platform", "admin", &[]);
    let prod_read = prod_env.token("viewer", "read", &[]);
    let prod_ci = prod_env.token("ci", "promote", &[]);
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let prod = Server::start_with_args(
        &prod_env.database(),
        &[
            ("PINION_ENVIRONMENT", "prod"),
            ("PINION_PEER_TOKEN_STAGING", &staging.read),
        ],
        &[
            "--peer",
            &format!("staging={}", staging.server.url()),
            "--peer",
            &format!("gone={dead}"),
        ],
    );
    for template in ["codex", "hermes"] {
        let put = http(
            prod.addr,
            "PUT",
            &format!("/cp/admin/runtimes/{template}"),
            Some(&prod_admin),
            Some(br#"{"image":null}"#),
        );
        assert!(put.status == 201, "{put:?}");
    }
    for (template, n) in [("codex", 1), ("hermes", 4)] {
        let body = format!(
            r#"{{"template_name":"{template}","image_digest":"{}"}}"#,
            digest(n)
        );
        assert_eq!(prod.post(PROMOTE, &prod_ci, &body).status, 201);
    }
    let session = login(prod.addr, &prod_read);
    let page = crate::support::poll_until("the peer is read", Duration::from_secs(15), || {
        let page = get(prod.addr, "/ui", Some(&session));
        page.body.contains(r#"data-env="staging""#).then_some(page)
    });
    let cell = |env: &str, template: &str| -> String {
        let marker =
            format!(r#"data-template="{template}" data-region="global" data-env="{env}">"#);
        let start = page
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no cell {env}/{template}: {}", page.body));
        let rest = &page.body[start..];
        rest[..rest.find("</td>").unwrap()].to_owned()
    };
    assert!(cell("prod", "codex").contains(&digest(1)[7..19]));
    assert!(cell("staging", "codex").contains(&digest(1)[7..19]));
    assert!(!cell("prod", "codex").contains("differs"), "codex agrees");
    assert!(cell("prod", "hermes").contains(&digest(4)[7..19]));
    assert!(cell("staging", "hermes").contains(&digest(3)[7..19]));
    for env in ["prod", "staging"] {
        assert!(
            cell(env, "hermes").contains("≠ differs"),
            "hermes disagrees, said in words: {}",
            cell(env, "hermes")
        );
    }
    // The peer that cannot be reached: unreachable, never empty.
    assert!(
        page.body.contains(
            r#"<th scope="colgroup" colspan="1" class="env unreachable">gone (unreachable)</th>"#
        ),
        "{}",
        page.body
    );
    assert!(page.body.contains("last seen never"));
    let filtered = get(prod.addr, "/ui?state=disagree", Some(&session));
    assert!(filtered.body.contains(">hermes</a>") && !filtered.body.contains(">codex</a>"));
    // One click compares: the pin page lists both environments.
    let compare = get(prod.addr, "/ui/pins/hermes/global", Some(&session));
    assert!(
        compare
            .body
            .contains("The environments pin different digests"),
        "{}",
        compare.body
    );
    assert!(compare.body.contains(&digest(3)) && compare.body.contains(&digest(4)));
}

/// A peer's links are shown only when they are http(s): a `javascript:`
/// CI run from a lying peer is no link at all.
#[test]
fn a_peers_script_link_is_not_a_link() {
    let pin = format!(
        r#"{{"pins":[{{"template_name":"codex","region":"global","image_digest":"{}","image_ref":null,"git_sha":"abc1234def","notes":null,"promoted_at":"2026-12-01T00:00:00Z","promoted_by":"ci","ci_run_url":"javascript:alert(document.cookie)"}}]}}"#,
        digest(1)
    );
    let peer = crate::support::FaultServer::start(crate::support::Fault::ByPath(vec![
        ("/cp/admin/runtime-image", pin),
        (
            "/cp/admin/runtime-image/drift",
            r#"{"checked_at":null,"tag":"latest","pins":[]}"#.to_owned(),
        ),
        ("/cp/fleet", r#"{"fleet":[]}"#.to_owned()),
    ]));
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    let read = env.token("viewer", "read", &[]);
    let server = Server::start_with_args(
        &env.database(),
        &[("PINION_PEER_TOKEN_LIAR", "pinion_not_a_real_token")],
        &["--peer", &format!("liar={}", peer.url())],
    );
    let session = login(server.addr, &read);
    let page = crate::support::poll_until("the peer is read", Duration::from_secs(15), || {
        let page = get(server.addr, "/ui", Some(&session));
        page.body.contains(r#"data-env="liar""#).then_some(page)
    });
    assert!(page.body.contains("abc1234"), "the commit is shown");
    assert!(!page.body.contains("javascript:"), "{}", page.body);
}
