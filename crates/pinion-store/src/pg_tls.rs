//! TLS to PostgreSQL, with the URL settings libpq users write:
//! `sslmode=disable|allow|prefer|require|verify-full` and `sslrootcert=PATH`.
//!
//! - `require`: the connection is encrypted; the server's certificate is
//!   not checked (as libpq's `require` without a root certificate).
//! - `verify-full`: encrypted, and the server's certificate must chain to
//!   `sslrootcert` (required) and name the host connected to.
//! - `disable`, `allow`, `prefer` or none: not encrypted. (libpq's `prefer`
//!   tries TLS first; here it is plain: ask for `require` to encrypt.)
//! - `verify-ca` is refused: say `verify-full`.
//!
//! tokio-postgres reads `sslmode` itself but knows only `disable`, `prefer`
//! and `require`, so the settings are taken out of the URL here, and the
//! connection is made with a rustls connector of Pinion's own.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres::{Client, NoTls, Socket};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::StoreError;

/// A PostgreSQL URL's connection settings and how to encrypt.
#[derive(Clone)]
pub(crate) struct Connection {
    pub config: postgres::Config,
    tls: Option<MakeRustls>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL's password.
        f.debug_struct("Connection")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub fn parse(url: &str) -> Result<Connection, StoreError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = None;
        let mut root = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => mode = Some(value.to_owned()),
                "sslrootcert" => root = Some(percent_decode(value)),
                _ => kept.push(pair),
            }
        }
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: postgres::Config = url
            .parse()
            .map_err(|_| StoreError::UnsupportedUrl("the PostgreSQL URL does not parse".into()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        let tls = match mode.as_deref() {
            None | Some("disable" | "allow" | "prefer") => {
                config.ssl_mode(postgres::config::SslMode::Disable);
                None
            }
            Some("require") => Some(MakeRustls::unverified()?),
            Some("verify-full") => {
                let root = root.ok_or_else(|| {
                    StoreError::UnsupportedUrl(
                        "sslmode=verify-full needs sslrootcert=PATH: the CA the server's certificate must chain to".into(),
                    )
                })?;
                Some(MakeRustls::verified(&root)?)
            }
            Some("verify-ca") => {
                return Err(StoreError::UnsupportedUrl(
                    "sslmode=verify-ca is not supported: use sslmode=verify-full (the CA and the host name)".into(),
                ));
            }
            Some(other) => {
                return Err(StoreError::UnsupportedUrl(format!(
                    "sslmode `{}` must be disable, allow, prefer, require or verify-full",
                    other.escape_debug()
                )));
            }
        };
        if tls.is_some() {
            config.ssl_mode(postgres::config::SslMode::Require);
        }
        Ok(Connection { config, tls })
    }

    /// A new connection, encrypted as the URL asked.
    pub fn connect(&self) -> Result<Client, postgres::Error> {
        match &self.tls {
            None => self.config.connect(NoTls),
            Some(tls) => self.config.connect(tls.clone()),
        }
    }
}

/// `%2F` and the like in a URL's query value.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |at: usize| {
            bytes
                .get(at)
                .and_then(|byte| char::from(*byte).to_digit(16))
        };
        match (bytes.get(index), hex(index + 1), hex(index + 2)) {
            (Some(b'%'), Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                index += 3;
            }
            (Some(byte), _, _) => {
                out.push(*byte);
                index += 1;
            }
            (None, _, _) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes a rustls client connection per PostgreSQL connection.
#[derive(Clone)]
pub(crate) struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl MakeRustls {
    fn verified(root: &str) -> Result<MakeRustls, StoreError> {
        let unusable =
            |why: String| StoreError::UnsupportedUrl(format!("sslrootcert {root}: {why}"));
        let mut roots = RootCertStore::empty();
        for certificate in
            CertificateDer::pem_file_iter(root).map_err(|err| unusable(err.to_string()))?
        {
            roots
                .add(certificate.map_err(|err| unusable(err.to_string()))?)
                .map_err(|err| unusable(err.to_string()))?;
        }
        if roots.is_empty() {
            return Err(unusable("no certificate in it".into()));
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| StoreError::UnsupportedUrl(err.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(MakeRustls {
            config: Arc::new(config),
        })
    }

    fn unverified() -> Result<MakeRustls, StoreError> {
        let provider = provider();
        let verifier = Arc::new(Unverified(provider.signature_verification_algorithms));
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| StoreError::UnsupportedUrl(err.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustls {
            config: Arc::new(config),
        })
    }
}

/// `sslmode=require`: any certificate, but the handshake's signatures are
/// still checked (the connection is encrypted to whoever holds the key the
/// certificate names).
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        Ok(RustlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

pub(crate) struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let stream = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(stream))
        })
    }
}

/// An encrypted connection to PostgreSQL.
pub(crate) struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_taken_out_of_the_url() {
        let plain = Connection::parse("postgres://u@h/db?application_name=x").unwrap();
        assert!(plain.tls.is_none());
        let required =
            Connection::parse("postgres://u@h/db?sslmode=require&connect_timeout=3").unwrap();
        assert!(required.tls.is_some());
        assert_eq!(
            required.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        for refused in [
            "postgres://u@h/db?sslmode=verify-full",
            "postgres://u@h/db?sslmode=verify-ca&sslrootcert=/x",
            "postgres://u@h/db?sslmode=always",
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/no/such/file.pem",
        ] {
            let message = Connection::parse(refused).err().unwrap().to_string();
            assert!(message.contains("ssl"), "{refused}: {message}");
        }
        assert_eq!(percent_decode("%2Fetc%2Fca.pem"), "/etc/ca.pem");
    }
}
