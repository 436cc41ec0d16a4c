//! SMART Backend Services: the token endpoint and scope enforcement.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

fn key(file: &str, alg: Algorithm) -> EncodingKey {
    let pem = std::fs::read(repo().join("tests/fixtures/smart").join(file)).unwrap();
    match alg {
        Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

struct A {
    alg: Algorithm,
    file: &'static str,
    kid: &'static str,
    iss: &'static str,
    aud: String,
    exp: i64,
    jti: String,
}

fn assertion(a: &A) -> String {
    let mut h = Header::new(a.alg);
    h.kid = Some(a.kid.to_string());
    let claims = json!({"iss": a.iss, "sub": a.iss, "aud": a.aud, "exp": a.exp, "jti": a.jti});
    let k = match a.alg {
        Algorithm::HS256 => EncodingKey::from_secret(b"a-shared-secret-nobody-should-use"),
        _ => key(a.file, a.alg),
    };
    jsonwebtoken::encode(&h, &claims, &k).unwrap()
}

fn good(base: &str, jti: &str) -> A {
    A {
        alg: Algorithm::RS384,
        file: "rsa-private.pem",
        kid: "rsa-1",
        iss: "plan-a-backend",
        aud: format!("{base}/auth/token"),
        exp: now() + 120,
        jti: jti.to_string(),
    }
}

async fn token_req(
    c: &reqwest::Client,
    base: &str,
    assertion: &str,
    scope: &str,
) -> (StatusCode, Value) {
    let body = format!(
        "grant_type=client_credentials&client_assertion_type={}&client_assertion={}&scope={}",
        "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer",
        assertion,
        scope
            .replace('/', "%2F")
            .replace(' ', "+")
            .replace('*', "%2A"),
    );
    let r = c
        .post(format!("{base}/auth/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let s = r.status();
    assert_eq!(r.headers()["cache-control"], "no-store");
    (
        s,
        serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_services_flow_and_scopes() {
    let (_dir, gw, base) = start_fhir().await;
    seed(
        gw.store.as_ref(),
        vec![
            patient("p1", "91000001A", "2010-03-15"),
            task("t1", "p1", "sr1", "requested", "mcp-a"),
        ],
    )
    .await;
    let c = reqwest::Client::new();
    // RS384, narrow scope.
    let (s, b) = token_req(
        &c,
        &base,
        &assertion(&good(&base, "j1")),
        "system/Patient.read",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["token_type"], "bearer");
    assert!(b["expires_in"].as_i64().unwrap() <= 300);
    assert_eq!(b["scope"], "system/Patient.read");
    let tok = b["access_token"].as_str().unwrap().to_string();
    let r = c
        .get(format!("{base}/fhir/Patient?_id=p1"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A system/Patient.read token cannot read Task.
    let r = c
        .get(format!("{base}/fhir/Task?_id=t1"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = c
        .get(format!("{base}/fhir/Task/t1"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A tampered token is 401.
    let (head, sig) = tok.rsplit_once('.').unwrap();
    let first = if sig.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{head}.{first}{}", &sig[1..]);
    let r = c
        .get(format!("{base}/fhir/Patient?_id=p1"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // ES384, wildcard read; a write scope is not granted to an MCP.
    let es = A {
        alg: Algorithm::ES384,
        file: "ec-private.p8.pem",
        kid: "ec-1",
        ..good(&base, "j2")
    };
    let (s, b) = token_req(
        &c,
        &base,
        &assertion(&es),
        "system/*.read system/CarePlan.write",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["scope"], "system/*.read");
    let tok = b["access_token"].as_str().unwrap().to_string();
    let r = c
        .get(format!("{base}/fhir/Task?_id=t1"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Only a write scope, for an MCP: nothing grantable.
    let (s, b) = token_req(
        &c,
        &base,
        &assertion(&good(&base, "j3")),
        "system/CarePlan.write",
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    let (s, b) = token_req(
        &c,
        &base,
        &assertion(&good(&base, "j4")),
        "patient/Task.read",
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    // An ECM provider's write scope works on POST and nowhere else.
    let ecm = A {
        iss: "compass-backend",
        ..good(&base, "j5")
    };
    let (s, b) = token_req(&c, &base, &assertion(&ecm), "system/CarePlan.write").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let tok = b["access_token"].as_str().unwrap().to_string();
    let r = c
        .get(format!("{base}/fhir/CarePlan"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = c
        .post(format!("{base}/fhir/Consent"))
        .bearer_auth(&tok)
        .header("Content-Type", "application/fhir+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_assertions_are_refused() {
    let (_dir, gw, base) = start_fhir().await;
    let c = reqwest::Client::new();
    let scope = "system/Task.read";
    let cases: Vec<(&str, A, StatusCode, &str)> = vec![
        (
            "expired",
            A {
                exp: now() - 120,
                ..good(&base, "b1")
            },
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "too long-lived",
            A {
                exp: now() + 3600,
                ..good(&base, "b2")
            },
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "wrong audience",
            A {
                aud: "https://elsewhere.example/token".into(),
                ..good(&base, "b3")
            },
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            "unknown kid",
            A {
                kid: "nope",
                ..good(&base, "b4")
            },
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "key not in the JWKS",
            A {
                file: "other-rsa-private.pem",
                ..good(&base, "b5")
            },
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "HS256",
            A {
                alg: Algorithm::HS256,
                ..good(&base, "b6")
            },
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "RS256",
            A {
                alg: Algorithm::RS256,
                ..good(&base, "b7")
            },
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "RS384 header on the EC key",
            A {
                kid: "ec-1",
                ..good(&base, "b8")
            },
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "unknown client",
            A {
                iss: "stranger",
                ..good(&base, "b9")
            },
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "static-token client",
            A {
                iss: "plan-a",
                ..good(&base, "b10")
            },
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
    ];
    for (what, a, status, error) in cases {
        let (s, b) = token_req(&c, &base, &assertion(&a), scope).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (status, Some(error)),
            "{what}: {b}"
        );
    }
    // alg none (unsigned).
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "rsa-1"})),
        b64(
            &json!({"iss": "plan-a-backend", "sub": "plan-a-backend", "aud": format!("{base}/auth/token"), "exp": now() + 60, "jti": "n1"})
        )
    );
    let (s, b) = token_req(&c, &base, &none, scope).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client")),
        "{b}"
    );
    // Replay: the same jti twice.
    let a = assertion(&good(&base, "replay-1"));
    let (s, _) = token_req(&c, &base, &a, scope).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = token_req(&c, &base, &a, scope).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // Wrong grant type / assertion type.
    let r = c
        .post(format!("{base}/auth/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("grant_type=password&username=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let b: Value = serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap();
    assert_eq!(b["error"], "unsupported_grant_type");
    let r = c
        .post(format!("{base}/auth/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_assertion=x&scope=system%2FTask.read")
        .send()
        .await
        .unwrap();
    let b: Value = serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap();
    assert_eq!(b["error"], "invalid_request");
    gw.stop().await;
}

/// A token request body that is not valid form encoding (a `%` without two
/// hex digits, bytes that are not UTF-8 once decoded) is a clear 400, and a
/// well-formed one with `+` for spaces and `%2B` for a plus goes on to the
/// assertion check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_token_request_bodies_are_a_clear_400() {
    let (_dir, gw, base) = start_fhir().await;
    let c = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        c.post(format!("{base}/auth/token"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let grant = "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";
    for tail in [
        &b"&client_assertion=%zz&scope=system%2FTask.read"[..],
        b"&client_assertion=x&scope=system%2FTask.read%",
        b"&client_assertion=x&scope=system%FF",
        b"&client_assertion=x&scope=system\xff",
    ] {
        let body = [grant.as_bytes(), tail].concat();
        let r = post(body).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let b: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(b["error"], "invalid_request", "{b}");
        assert_eq!(b["error_description"], "body must be form-encoded", "{b}");
    }
    // Decoded fine: `+` and `%2B` reach the assertion check (which refuses a
    // non-JWT), not the form check.
    let body =
        format!("{grant}&client_assertion=a%2Bb+c&scope=system%2FTask.read+system%2FPatient.read");
    let r = post(body.into_bytes()).await.unwrap();
    let b: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(
        (b["error"].as_str(), b["error_description"].as_str()),
        (
            Some("invalid_client"),
            Some("client_assertion is not a signed JWT")
        ),
        "{b}"
    );
    gw.stop().await;
}
