//! A real OCI registry for tests: Debian's `docker-registry` (CNCF
//! distribution) on a free loopback port with a temporary storage directory,
//! and real images pushed to it with `skopeo` from OCI layouts written here.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

pub struct TestRegistry {
    child: Option<Child>,
    pub addr: SocketAddr,
    config: std::path::PathBuf,
    /// Storage and config; removed when the registry is dropped.
    _dir: tempfile::TempDir,
    /// `user:password` when the registry demands basic auth.
    pub creds: Option<String>,
}

/// How the registry authenticates.
pub enum Auth {
    None,
    /// htpasswd basic auth with this user and password.
    Basic(&'static str, &'static str),
    /// distribution's `silly` bearer auth, pointing clients at this realm.
    SillyBearer(String),
}

impl TestRegistry {
    pub fn start(auth: Auth) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        let mut creds = None;
        match auth {
            Auth::None => {}
            Auth::Basic(user, password) => {
                let htpasswd = dir.path().join("htpasswd");
                let output = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd (apache2-utils)");
                assert!(output.status.success());
                std::fs::write(&htpasswd, &output.stdout).unwrap();
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
                    htpasswd.display()
                ));
                creds = Some(format!("{user}:{password}"));
            }
            Auth::SillyBearer(realm) => {
                config.push_str(&format!(
                    "auth:\n  silly:\n    realm: {realm}\n    service: pinion-test\n"
                ));
                creds = Some("anyone:anything".into());
            }
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut registry = TestRegistry {
            child: None,
            addr,
            config: config_path,
            _dir: dir,
            creds,
        };
        registry.run();
        registry
    }

    /// (Re)starts the process on the same port and storage.
    pub fn run(&mut self) {
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not start on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn repository(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    fn skopeo(&self) -> Command {
        let mut command = Command::new("skopeo");
        command.arg("--insecure-policy");
        command
    }

    /// Pushes a one-platform image whose content depends on `seed`; returns
    /// the manifest digest `skopeo inspect` reports for it.
    pub fn push_image(&self, repo: &str, tag: &str, seed: &str) -> String {
        let layout = tempfile::tempdir().unwrap();
        let manifest = write_image(layout.path(), seed, "amd64");
        write_index_json(layout.path(), &manifest, tag);
        self.copy(layout.path(), repo, tag, false);
        self.inspect_digest(repo, tag)
    }

    /// Pushes a two-platform index (linux/amd64, linux/arm64); returns
    /// (index digest, amd64 manifest digest, arm64 manifest digest).
    pub fn push_index(&self, repo: &str, tag: &str, seed: &str) -> (String, String, String) {
        let layout = tempfile::tempdir().unwrap();
        let amd64 = write_image(layout.path(), &format!("{seed}-amd64"), "amd64");
        let arm64 = write_image(layout.path(), &format!("{seed}-arm64"), "arm64");
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                descriptor_with_platform(&amd64, "amd64"),
                descriptor_with_platform(&arm64, "arm64"),
            ]
        });
        let index = write_blob(
            layout.path(),
            "application/vnd.oci.image.index.v1+json",
            index.to_string().as_bytes(),
        );
        write_index_json(layout.path(), &index, tag);
        self.copy(layout.path(), repo, tag, true);
        (self.inspect_digest(repo, tag), amd64.digest, arm64.digest)
    }

    fn copy(&self, layout: &Path, repo: &str, tag: &str, all: bool) {
        let mut command = self.skopeo();
        command.args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        if all {
            command.arg("--all");
        }
        if let Some(creds) = &self.creds {
            command.args(["--dest-creds", creds]);
        }
        command.arg(format!("oci:{}:{tag}", layout.display()));
        command.arg(format!("docker://{}/{repo}:{tag}", self.addr));
        let output = command.output().expect("skopeo");
        assert!(
            output.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn inspect_digest(&self, repo: &str, tag: &str) -> String {
        let mut command = self.skopeo();
        command.args(["inspect", "--tls-verify=false"]);
        if let Some(creds) = &self.creds {
            command.args(["--creds", creds]);
        }
        command.arg(format!("docker://{}/{repo}:{tag}", self.addr));
        let output = command.output().expect("skopeo");
        assert!(
            output.status.success(),
            "skopeo inspect: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        json["Digest"].as_str().unwrap().to_owned()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A blob written into an OCI layout.
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub size: usize,
}

fn write_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Blob {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), bytes).unwrap();
    Blob {
        media_type: media_type.to_owned(),
        digest: format!("sha256:{hex}"),
        size: bytes.len(),
    }
}

fn descriptor(blob: &Blob) -> serde_json::Value {
    serde_json::json!({"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size})
}

fn descriptor_with_platform(blob: &Blob, architecture: &str) -> serde_json::Value {
    let mut value = descriptor(blob);
    value["platform"] = serde_json::json!({"os": "linux", "architecture": architecture});
    value
}

/// One real tar layer holding a file whose content is `seed`, its config and
/// its manifest; returns the manifest blob.
fn write_image(layout: &Path, seed: &str, architecture: &str) -> Blob {
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("seed.txt"), seed).unwrap();
    let tar = source.path().join("layer.tar");
    let status = Command::new("tar")
        .args([
            "--mtime=2026-01-01",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
        ])
        .arg(&tar)
        .arg("-C")
        .arg(source.path())
        .arg("seed.txt")
        .status()
        .unwrap();
    assert!(status.success());
    let layer = write_blob(
        layout,
        "application/vnd.oci.image.layer.v1.tar",
        &std::fs::read(&tar).unwrap(),
    );
    let config = serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]}
    });
    let config = write_blob(
        layout,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor(&config),
        "layers": [descriptor(&layer)]
    });
    write_blob(
        layout,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    )
}

fn write_index_json(layout: &Path, top: &Blob, tag: &str) {
    let mut entry = descriptor(top);
    entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .unwrap();
}
