//! The HTTPS listener (`[server.tls]`) and client certificates, through real
//! TLS connections (reqwest with rustls) and the binary's `check-config`.
//! Every certificate and key is generated here, at test time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;

use crate::common::*;

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A test certificate authority.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: pem("CERTIFICATE", cert.der()),
            params,
            key,
        }
    }

    /// A server (SANs) or client certificate signed by this CA.
    fn issue(&self, cn: &str, sans: &[&str], client: bool) -> Issued {
        let key = KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Issued {
            cert_pem: pem("CERTIFICATE", cert.der()),
            key_pem: pem("PRIVATE KEY", &key.serialize_der()),
            der: cert.der().to_vec(),
        }
    }
}

struct Issued {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Issued {
    fn sha256(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&self.der))
    }

    /// As `openssl x509 -fingerprint -sha256` prints it: `AB:CD:…`.
    fn openssl_fingerprint(&self) -> String {
        self.sha256()
            .to_ascii_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":")
    }

    fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.key_pem, self.cert_pem).as_bytes())
            .unwrap()
    }
}

/// The CA, the server certificate (127.0.0.1, localhost) and its files.
struct Pki {
    ca: Ca,
    server: Issued,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca = Ca::new("cwsgw test CA");
        let server = ca.issue("gateway", &["127.0.0.1", "localhost"], false);
        let pki = Pki {
            ca,
            server,
            dir: dir.to_path_buf(),
        };
        pki.write("ca.pem", &pki.ca.pem);
        pki.write("server.pem", &pki.server.cert_pem);
        pki.write("server.key", &pki.server.key_pem);
        pki
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `[server.tls]` with the client CA (optional or required client certs).
    fn tls_table(&self, client_ca: bool, require: bool) -> String {
        let mut t = format!(
            "\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.path("server.pem"),
            self.path("server.key")
        );
        if client_ca {
            t.push_str(&format!("client_ca_file = \"{}\"\n", self.path("ca.pem")));
        }
        if require {
            t.push_str("require_client_cert = true\n");
        }
        t
    }

    /// An HTTPS client trusting only the test CA.
    fn client(&self, identity: Option<&Issued>) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca.pem.as_bytes()).unwrap();
        let mut b = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(10));
        if let Some(i) = identity {
            b = b.identity(i.identity());
        }
        b.build().unwrap()
    }
}

const OPS_CERT_TOKEN: &str = "ops-cert-test-token";

async fn start(dir: &Path, extra: &str) -> cws_gateway::serve::Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let text = config_text(dir, &format!("{}{extra}", fhir_extra()));
    let cfg = cws_gateway::config::Config::from_toml(&text, "test").expect("tls test config");
    cws_gateway::serve::start(cfg).await.unwrap()
}

async fn get(c: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, String) {
    let mut r = c.get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let s = resp.status().as_u16();
    (s, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_health_metrics_and_fhir_with_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let gw = start(dir.path(), &pki.tls_table(false, false)).await;
    seed(
        gw.store.as_ref(),
        vec![
            patient("p1", "91000001A", "2010-03-15"),
            patient("p2", "91000002A", "2011-04-16"),
        ],
    )
    .await;
    let base = format!("https://{}", gw.http_addr);
    let c = pki.client(None);
    assert_eq!(
        get(&c, &format!("{base}/healthz"), None).await,
        (200, "ok\n".into())
    );
    assert_eq!(get(&c, &format!("{base}/readyz"), None).await.0, 200);
    // The FHIR API with a bearer token, as over plain HTTP.
    let (s, b) = get(&c, &format!("{base}/fhir/Patient/p1"), Some(OPS_TOKEN)).await;
    assert_eq!(s, 200, "{b}");
    let p: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(p["id"], "p1");
    let (s, _) = get(&c, &format!("{base}/fhir/Patient/p1"), None).await;
    assert_eq!(s, 401);
    // Paging links name the HTTPS base (no public_url configured).
    let (s, b) = get(
        &c,
        &format!("{base}/fhir/Patient?_count=1"),
        Some(OPS_TOKEN),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let bundle: Value = serde_json::from_str(&b).unwrap();
    let next = bundle["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .unwrap_or_else(|| panic!("no next link: {bundle}"))
        .to_string();
    assert!(next.starts_with(&format!("{base}/fhir/Patient?")), "{next}");
    let (s, _) = get(&c, &next, Some(OPS_TOKEN)).await;
    assert_eq!(s, 200);
    // The token endpoint and CapabilityStatement carry the https base too.
    let (_, meta) = get(&c, &format!("{base}/fhir/metadata"), None).await;
    assert!(meta.contains(&format!("{base}/auth/token")), "{meta}");
    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let plain = reqwest::Client::new();
    let r = plain
        .get(format!("http://{}/healthz", gw.http_addr))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(
        r.is_err() || !r.unwrap().status().is_success(),
        "plain HTTP must not be served on the TLS port"
    );
    // A client that does not trust the CA fails the handshake.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(Ca::new("other").pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());
    // Metrics over TLS, with the handshake counters.
    let (s, m) = get(&c, &format!("{base}/metrics"), Some(OPS_TOKEN)).await;
    assert_eq!(s, 200);
    assert!(
        m.contains("cwsgw_tls_handshakes_total{outcome=\"ok\"}"),
        "{m}"
    );
    assert!(gw.metrics.tls_handshakes.get(&["ok"]) >= 1);
    // Graceful shutdown still completes with idle keep-alive connections open.
    let addr = gw.http_addr;
    tokio::time::timeout(Duration::from_secs(20), gw.stop())
        .await
        .expect("stop within 20 s");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_client_certificate_authenticates_without_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ops_cert = pki.ca.issue("ops-cert", &[], true);
    let unmapped = pki.ca.issue("somebody", &[], true);
    let stranger = Ca::new("stranger CA").issue("ops-cert", &[], true);
    // Mapped by the openssl-style fingerprint (colons, upper case).
    let extra = format!(
        r#"{tls}
[[clients]]
id = "ops-cert"
organization = "ops"
token_sha256 = "{tok}"
cert_sha256 = "{fp}"
"#,
        tls = pki.tls_table(true, false),
        tok = sha(OPS_CERT_TOKEN),
        fp = ops_cert.openssl_fingerprint(),
    );
    let gw = start(dir.path(), &extra).await;
    seed(
        gw.store.as_ref(),
        vec![patient("p1", "91000001A", "2010-03-15")],
    )
    .await;
    let base = format!("https://{}", gw.http_addr);
    let metrics = format!("{base}/metrics");
    let read = format!("{base}/fhir/Patient/p1");

    // The mapped certificate alone is the client (operator: metrics, reads).
    let c = pki.client(Some(&ops_cert));
    assert_eq!(get(&c, &metrics, None).await.0, 200);
    let (s, b) = get(&c, &read, None).await;
    assert_eq!(s, 200, "{b}");
    // With its own bearer token too: fine.
    assert_eq!(get(&c, &metrics, Some(OPS_CERT_TOKEN)).await.0, 200);
    // A bearer token naming another client: 401, saying why.
    let (s, b) = get(&c, &metrics, Some(OPS_TOKEN)).await;
    assert_eq!(s, 401, "{b}");
    assert!(b.contains("different clients"), "{b}");
    let (s, _) = get(&c, &read, Some(MCP_TOKEN)).await;
    assert_eq!(s, 401);
    // An unknown bearer token stays 401 even with a mapped certificate.
    assert_eq!(get(&c, &metrics, Some("nope")).await.0, 401);

    // A CA-valid certificate no client lists gives no identity.
    let u = pki.client(Some(&unmapped));
    assert_eq!(get(&u, &metrics, None).await.0, 401);
    assert_eq!(get(&u, &metrics, Some(OPS_TOKEN)).await.0, 200);

    // Client certificates are optional here: none + bearer works.
    let n = pki.client(None);
    assert_eq!(get(&n, &metrics, None).await.0, 401);
    assert_eq!(get(&n, &metrics, Some(OPS_TOKEN)).await.0, 200);

    // A certificate from another CA fails the handshake (TLS 1.3: the
    // client learns it at its first read).
    let s = pki.client(Some(&stranger));
    assert!(s.get(&metrics).bearer_auth(OPS_TOKEN).send().await.is_err());
    // The server counts the failure after it sends the alert, so the client
    // can see the error first: wait (bounded) for the count.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gw.metrics.tls_handshakes.get(&["bad_client_cert"]) == 0 {
        assert!(std::time::Instant::now() < deadline, "failure not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_refuse_handshakes_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let good = pki.ca.issue("any-client", &[], true);
    let gw = start(dir.path(), &pki.tls_table(true, true)).await;
    let base = format!("https://{}", gw.http_addr);

    // A silent TCP peer holds its handshake slot, not the listener.
    let _silent = tokio::net::TcpStream::connect(gw.http_addr).await.unwrap();

    // No certificate: the handshake fails, counted and no HTTP answer.
    let none = pki.client(None);
    assert!(none.get(format!("{base}/healthz")).send().await.is_err());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gw.metrics.tls_handshakes.get(&["no_client_cert"]) == 0 {
        assert!(std::time::Instant::now() < deadline, "failure not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A certificate from another CA: refused too.
    let stranger = Ca::new("stranger CA").issue("x", &[], true);
    assert!(pki
        .client(Some(&stranger))
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());
    // A CA-signed certificate: served; unmapped, so still bearer for the API.
    let c = pki.client(Some(&good));
    assert_eq!(get(&c, &format!("{base}/healthz"), None).await.0, 200);
    assert_eq!(get(&c, &format!("{base}/metrics"), None).await.0, 401);
    assert_eq!(
        get(&c, &format!("{base}/metrics"), Some(OPS_TOKEN)).await.0,
        200
    );
    gw.stop().await;
}

fn check_config(file: &Path) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cws-gateway"))
        .args(["check-config", &file.display().to_string()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_and_start_refuse_bad_tls_files_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let cfg_file = dir.path().join("gw.toml");
    let write_cfg = |tls: &str| {
        std::fs::write(&cfg_file, config_text(dir.path(), tls)).unwrap();
    };

    // Good files: OK, and the listener is described.
    write_cfg(&pki.tls_table(true, true));
    let (code, out, err) = check_config(&cfg_file);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("https  127.0.0.1:0") && out.contains("client certificates required"),
        "{out}"
    );

    let one_line = |err: &str, needles: &[&str]| {
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {err}");
        for n in needles {
            assert!(lines[0].contains(n), "{n} not in {err}");
        }
    };

    // A missing file.
    let missing = dir.path().join("nope.pem").display().to_string();
    write_cfg(&format!(
        "\n[server.tls]\ncert_file = \"{missing}\"\nkey_file = \"{}\"\n",
        pki.path("server.key")
    ));
    let (code, _, err) = check_config(&cfg_file);
    assert_ne!(code, 0);
    one_line(&err, &["server.tls.cert_file", "nope.pem"]);

    // A key that is not the certificate's.
    let other = pki.ca.issue("other", &["localhost"], false);
    pki.write("other.key", &other.key_pem);
    let mismatched = format!(
        "\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.path("server.pem"),
        pki.path("other.key")
    );
    write_cfg(&mismatched);
    let (code, _, err) = check_config(&cfg_file);
    assert_ne!(code, 0);
    one_line(&err, &["server.tls.key_file", "does not match"]);
    // serve refuses it the same way, before binding anything.
    let cfg = cws_gateway::config::Config::from_toml(&config_text(dir.path(), &mismatched), "test")
        .unwrap();
    let e = cws_gateway::serve::start(cfg).await.err().expect("refused");
    assert!(e.to_string().contains("does not match"), "{e}");

    // Not PEM / no key in the key file.
    pki.write("junk.key", "not a key\n");
    write_cfg(&format!(
        "\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.path("server.pem"),
        pki.path("junk.key")
    ));
    let (code, _, err) = check_config(&cfg_file);
    assert_ne!(code, 0);
    one_line(&err, &["server.tls.key_file", "no private key"]);

    // A CA file without certificates.
    write_cfg(&format!(
        "\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("server.key")
    ));
    let (code, _, err) = check_config(&cfg_file);
    assert_ne!(code, 0);
    one_line(&err, &["server.tls.client_ca_file", "no PEM certificate"]);

    // Pure validation: unknown key, require without a CA, cert_sha256 without a CA.
    write_cfg(&format!(
        "\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nrequire_client_certs = true\n",
        pki.path("server.pem"),
        pki.path("server.key")
    ));
    let (code, _, err) = check_config(&cfg_file);
    assert_ne!(code, 0);
    one_line(&err, &["require_client_certs"]);
}
