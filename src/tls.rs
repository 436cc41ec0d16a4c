//! The HTTP API's optional TLS listener (`[server.tls]`): rustls with the ring
//! provider, certificate and key from PEM files, optionally client
//! certificates verified against a CA and mapped to configured clients by the
//! SHA-256 fingerprint of their DER (`clients[].cert_sha256`).
//!
//! Handshakes run in their own tasks with a time limit, so a slow or silent
//! peer holds no other connection back; finished connections are handed to
//! the HTTP accept loop (`serve.rs`) through [`TlsListener`], which keeps
//! graceful shutdown as it is for plain HTTP. The verified client
//! certificate's fingerprint reaches the handlers as [`TlsPeer`]
//! ([`TlsPeer::of`], an extension of each request), read by
//! [`crate::edge::ClientCert`]. Handshake failures are logged with the peer
//! address only and counted in `cwsgw_tls_handshakes_total{outcome}`.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::telemetry::Metrics;

/// A handshake not finished in this time is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further connections wait in the
/// kernel's accept queue.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// Largest PEM file read.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why the TLS set-up failed: one line naming the key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path}: {reason}")]
    File {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("server.tls.key_file {path}: the private key does not match the certificate in server.tls.cert_file")]
    KeyMismatch { path: String },
    #[error("server.tls: {0}")]
    Setup(String),
}

fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let fail = |reason: String| TlsError::File {
        key,
        path: path.display().to_string(),
        reason,
    };
    let f = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut buf = Vec::new();
    f.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| fail(e.to_string()))?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(fail(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(buf)
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(key, path)?;
    let fail = |reason: String| TlsError::File {
        key,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(fail(
            "no PEM certificate (BEGIN CERTIFICATE) in the file".into(),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key = "server.tls.key_file";
    let pem = read_pem(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::File {
        key,
        path: path.display().to_string(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key (PKCS#8, RSA or SEC1 PEM) in the file".into()
            }
            e => format!("not PEM: {e}"),
        },
    })
}

/// Read and check `[server.tls]`: the files are readable, parse as PEM, the
/// key is usable and matches the certificate, the client CA is a CA
/// certificate rustls accepts. Used at start and by `check-config`.
pub fn load(tls: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("server.tls.cert_file", &tls.cert_file)?;
    let key = read_key(&tls.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let key = "server.tls.client_ca_file";
            let mut roots = RootCertStore::empty();
            for c in read_certs(key, path)? {
                roots.add(c).map_err(|e| TlsError::File {
                    key,
                    path: path.display().to_string(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tls.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| TlsError::File {
                key,
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                path: tls.key_file.display().to_string(),
            }
        }
        e => TlsError::File {
            key: "server.tls.key_file",
            path: tls.key_file.display().to_string(),
            reason: format!("cannot use this key with server.tls.cert_file: {e}"),
        },
    })?;
    // The API speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Lowercase hex SHA-256 of a certificate's DER (what `cert_sha256` holds).
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// What a TLS connection tells the handlers: the peer address and, when it
/// presented a certificate that chained to `client_ca_file`, that
/// certificate's fingerprint (mapped or not).
#[derive(Debug, Clone)]
pub struct TlsPeer {
    pub addr: SocketAddr,
    pub cert_sha256: Option<Arc<str>>,
}

impl TlsPeer {
    /// The peer of an accepted TLS connection: its address and the
    /// fingerprint of the client certificate it presented, if any.
    pub fn of(
        io: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        addr: SocketAddr,
    ) -> Self {
        let (_, conn) = io.get_ref();
        TlsPeer {
            addr,
            cert_sha256: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::from(fingerprint(c.as_ref()))),
        }
    }
}

/// Closed label for a failed handshake.
fn failure_kind(e: &std::io::Error) -> &'static str {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => "no_client_cert",
        Some(rustls::Error::InvalidCertificate(_)) => "bad_client_cert",
        Some(_) => "protocol",
        None => "io",
    }
}

/// An `axum::serve` listener yielding connections whose TLS handshake is done.
/// Dropping it (graceful shutdown does) stops accepting.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    acceptor_task: tokio::task::AbortHandle,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl TlsListener {
    /// Accept on `tcp` and handshake with `config`, counting outcomes.
    pub fn new(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<TlsListener> {
        let local_addr = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let slots = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp_stream, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp_stream.set_nodelay(true);
                let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp_stream)).await
                    {
                        Ok(Ok(tls)) => {
                            metrics.tls_handshakes.inc(&["ok"]);
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => {
                            let kind = failure_kind(&e);
                            metrics.tls_handshakes.inc(&[kind]);
                            tracing::warn!(peer = %addr, outcome = kind, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics.tls_handshakes.inc(&["timeout"]);
                            tracing::warn!(peer = %addr, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local_addr,
            acceptor_task: task.abort_handle(),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor is gone (only after drop): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(label: &str, der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// A self-signed certificate and its key, as PEM.
    fn self_signed() -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (
            pem("CERTIFICATE", cert.der()),
            pem("PRIVATE KEY", &key.serialize_der()),
            cert.der().to_vec(),
        )
    }

    fn cfg(dir: &Path, cert: &str, key: &str, ca: Option<&str>) -> TlsConfig {
        TlsConfig {
            cert_file: dir.join(cert),
            key_file: dir.join(key),
            client_ca_file: ca.map(|c| dir.join(c)),
            require_client_cert: false,
        }
    }

    #[test]
    fn load_checks_files_pem_and_key_match() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (cert, key, der) = self_signed();
        let (_, other_key, _) = self_signed();
        std::fs::write(d.join("c.pem"), &cert).unwrap();
        std::fs::write(d.join("k.pem"), &key).unwrap();
        std::fs::write(d.join("other.pem"), &other_key).unwrap();
        std::fs::write(d.join("junk.pem"), "junk\n").unwrap();

        let ok = load(&cfg(d, "c.pem", "k.pem", None)).unwrap();
        assert_eq!(ok.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // The self-signed certificate doubles as a client CA.
        load(&cfg(d, "c.pem", "k.pem", Some("c.pem"))).unwrap();

        let err = |c: TlsConfig| load(&c).map(|_| ()).unwrap_err().to_string();
        let e = err(cfg(d, "missing.pem", "k.pem", None));
        assert!(
            e.starts_with("server.tls.cert_file ") && e.contains("missing.pem"),
            "{e}"
        );
        let e = err(cfg(d, "junk.pem", "k.pem", None));
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = err(cfg(d, "c.pem", "junk.pem", None));
        assert!(
            e.contains("server.tls.key_file") && e.contains("no private key"),
            "{e}"
        );
        let e = err(cfg(d, "c.pem", "other.pem", None));
        assert!(e.contains("does not match the certificate"), "{e}");
        let e = err(cfg(d, "c.pem", "k.pem", Some("k.pem")));
        assert!(e.starts_with("server.tls.client_ca_file "), "{e}");
        for e in [
            err(cfg(d, "c.pem", "other.pem", None)),
            err(cfg(d, "junk.pem", "k.pem", None)),
        ] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
        assert_eq!(fingerprint(&der).len(), 64);
    }

    #[test]
    fn handshake_failures_get_closed_labels() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            failure_kind(&io(rustls::Error::NoCertificatesPresented)),
            "no_client_cert"
        );
        assert_eq!(
            failure_kind(&io(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))),
            "bad_client_cert"
        );
        assert_eq!(
            failure_kind(&io(rustls::Error::HandshakeNotComplete)),
            "protocol"
        );
        assert_eq!(
            failure_kind(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            "io"
        );
    }
}
