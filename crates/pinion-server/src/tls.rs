//! TLS for `pinion serve --tls-cert PEM --tls-key PEM`: rustls with its
//! safe defaults (TLS 1.2 and 1.3, no legacy suites), HTTP/2 and HTTP/1.1
//! offered by ALPN. The certificate files are read again when they change
//! on disk (checked every second) or on SIGHUP; each new connection gets
//! the newest pair that loaded, connections already open keep theirs. A
//! pair that does not load (a half-written file, a key that does not match)
//! is logged and the previous one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the certificate chain and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How often the files are looked at.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The server's current TLS configuration.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<(Arc<ServerConfig>, Stamp)>,
}

/// What the files looked like when they were loaded: a change of either
/// file's modification time or length means a reload.
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(files: &TlsFiles) -> Stamp {
    let one = |path: &Path| {
        std::fs::metadata(path).map_or((None, 0), |meta| (meta.modified().ok(), meta.len()))
    };
    [one(&files.cert), one(&files.key)]
}

/// Reads the pair and makes a configuration of it.
fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|err| format!("{}: {err}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|err| format!("{}: {err}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|err| format!("{}: {err}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| {
            format!(
                "{} and {}: {err}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Tls {
    /// Loads the pair; an error names the file and the problem.
    pub fn open(files: TlsFiles) -> Result<Tls, String> {
        let seen = stamp(&files);
        let config = load(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new((config, seen)),
        })
    }

    /// The configuration a new connection gets.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// Loads the files again if they changed since (or always, when
    /// `forced`); true when a new pair is in use.
    fn reload(&self, forced: bool) -> bool {
        let seen = stamp(&self.files);
        let unchanged = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            == seen;
        if unchanged && !forced {
            return false;
        }
        match load(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = (config, seen);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate loaded again; new connections get it");
                true
            }
            Err(error) => {
                // Remember the stamp: a broken file is reported once, not
                // every second, and a fixed one (a new stamp) is loaded.
                self.current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .1 = seen;
                tracing::error!(%error, "the TLS certificate files changed but do not load; still serving the previous certificate");
                false
            }
        }
    }
}

/// Reloads the pair when its files change or on SIGHUP; runs until aborted.
pub async fn watch(tls: Arc<Tls>) {
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(error = %err, "no SIGHUP handler; certificate files are still checked every second");
            None
        }
    };
    loop {
        let forced = tokio::select! {
            _ = ticker.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let tls = tls.clone();
        let _ = tokio::task::spawn_blocking(move || tls.reload(forced)).await;
    }
}
