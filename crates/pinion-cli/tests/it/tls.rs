//! TLS end to end, with a CA the test makes (`openssl`): the gate trusts it
//! with `--ca-cert` and refuses the server without it, naming the
//! certificate problem; HTTP/2 and HTTP/1.1 are both spoken; the session
//! cookie is `Secure`; and a certificate replaced on disk is served to the
//! next connection without a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{Env, Server, digest, eventually, pinion, run};

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`
/// under `name`: `<name>-ca.pem`, `<name>-cert.pem`, `<name>-key.pem`.
pub fn make_pki(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let path = |file: &str| dir.join(format!("{name}-{file}"));
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian package openssl; `cargo xtask test` installs it)");
        assert!(output.status.success(), "openssl {args:?}: {output:?}");
    };
    let (ca_key, ca, key, csr, cert, ext) = (
        path("ca-key.pem"),
        path("ca.pem"),
        path("key.pem"),
        path("req.pem"),
        path("cert.pem"),
        path("ext.cnf"),
    );
    let s = |path: &PathBuf| path.to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &s(&ca_key),
        "-out",
        &s(&ca),
        "-days",
        "2",
        "-subj",
        &format!("/CN=Pinion test CA {name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-out",
        &s(&cert),
        "-days",
        "2",
        "-extfile",
        &s(&ext),
    ]);
    (ca, cert, key)
}

fn https(server: &Server) -> String {
    format!("https://127.0.0.1:{}", server.addr.port())
}

#[test]
fn the_gate_over_tls_trusts_a_private_ca_and_follows_a_new_certificate() {
    let fixture = tempfile::tempdir().unwrap();
    let dir = fixture.path();
    let (ca_one, cert_one, key_one) = make_pki(dir, "one");
    let (ca_two, cert_two, key_two) = make_pki(dir, "two");
    // The server reads the files where they are deployed.
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::copy(&cert_one, &cert).unwrap();
    std::fs::copy(&key_one, &key).unwrap();
    let env = Env::new();
    env.add_template("codex", "localhost:5000/codex");
    let token = env.token("ci", "promote", &[]);
    let server = Server::start(
        &env.database(),
        &[
            ("PINION_TLS_CERT", cert.to_str().unwrap()),
            ("PINION_TLS_KEY", key.to_str().unwrap()),
        ],
    );
    let url = https(&server);
    let gate = |command: &str, ca: Option<&Path>| {
        let mut command_line = pinion();
        command_line
            .args([
                command,
                "--server",
                &url,
                "--template",
                "codex",
                "--digest",
                &digest(1),
            ])
            .env("PINION_TOKEN", &token);
        if let Some(ca) = ca {
            command_line.arg("--ca-cert").arg(ca);
        }
        run(&mut command_line)
    };
    // Trusted through --ca-cert: the gate passes.
    let promoted = gate("promote", Some(&ca_one));
    assert_eq!(promoted.code, 0, "{promoted:?}");
    let verified = gate("verify", Some(&ca_one));
    assert_eq!(verified.code, 0, "{verified:?}");
    // PINION_CA_CERT works too.
    let mut by_variable = pinion();
    by_variable
        .args([
            "verify",
            "--server",
            &url,
            "--template",
            "codex",
            "--digest",
            &digest(1),
        ])
        .env("PINION_TOKEN", &token)
        .env("PINION_CA_CERT", &ca_one);
    assert_eq!(run(&mut by_variable).code, 0);
    // Without it: exit 2, one line that names the certificate problem.
    for command in ["promote", "verify"] {
        let refused = gate(command, None);
        assert_eq!(refused.code, 2, "{command}: {refused:?}");
        let reason = refused.reason();
        assert!(
            reason.contains("certificate") && reason.contains("UnknownIssuer"),
            "{command} names the certificate problem: {reason}"
        );
        assert_eq!(refused.stderr.trim().lines().count(), 1, "{refused:?}");
    }
    // A --ca-cert that is not a certificate: exit 2 before any request.
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let refused = gate("verify", Some(&garbage));
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("--ca-cert"), "{refused:?}");
    // HTTP/2 by ALPN, HTTP/1.1 otherwise; the session cookie is Secure.
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let output = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version}",
                flag,
                "--cacert",
            ])
            .arg(&ca_one)
            .arg(format!("{url}/healthz"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            version,
            "{output:?}"
        );
    }
    let login = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(&ca_one)
        .args(["--data-urlencode", &format!("token={token}")])
        .arg(format!("{url}/ui/login"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&login.stdout).to_ascii_lowercase();
    let cookie = head
        .lines()
        .find(|line| line.starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(cookie.contains("; secure"), "Secure over TLS: {cookie}");
    // The certificate is replaced on disk (key first, as a deploy might):
    // the next connection gets the new one, no restart.
    std::fs::copy(&key_two, &key).unwrap();
    std::fs::copy(&cert_two, &cert).unwrap();
    eventually(
        "the new certificate is served",
        Duration::from_secs(10),
        || gate("verify", Some(&ca_two)).code == 0,
    );
    let old = gate("verify", Some(&ca_one));
    assert_eq!(old.code, 2, "the old CA no longer matches: {old:?}");
    // A broken pair on disk keeps the last good one in service.
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        gate("verify", Some(&ca_two)).code,
        0,
        "still serving the last good pair"
    );
    assert!(
        server
            .logs()
            .iter()
            .any(|line| line.contains("do not load")),
        "the broken files are reported"
    );
}
