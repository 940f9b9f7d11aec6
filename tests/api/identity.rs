//! Tokens from an external identity service: a public key or a JWKS document, RS256 or ES256,
//! with the issuer and audience checked when configured.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{TestServer, eventually};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use futures_util::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

fn key_file(name: &str) -> String {
    std::fs::read_to_string(format!("{KEYS}/{name}")).unwrap()
}

fn sign(
    algorithm: Algorithm,
    private_pem: &str,
    kid: Option<&str>,
    claims: serde_json::Value,
) -> String {
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap(),
    };
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn claims(user: &str) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({ "id": user, "iat": now, "exp": now + 600 })
}

async fn send_status(server: &TestServer, token: &str) -> u16 {
    let response = server
        .http
        .post(server.url("/api/messages"))
        .bearer_auth(token)
        .json(&json!({ "participants": ["alice", "bob"], "content": "hi" }))
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn an_rs256_public_key_from_a_file_verifies_and_pins_the_algorithm() {
    let setting = format!("@{KEYS}/rsa-public.pem");
    let server = TestServer::start_with(&[("JWT_PUBLIC_KEY", &setting)]).await;
    let token = sign(
        Algorithm::RS256,
        &key_file("rsa-private.pem"),
        None,
        claims("alice"),
    );
    assert_eq!(send_status(&server, &token).await, 202);
    // The shared-secret tokens it used to take are refused now: the algorithm is pinned.
    assert_eq!(send_status(&server, &server.token("alice")).await, 401);
    let other_key = sign(
        Algorithm::ES256,
        &key_file("ec-private.pem"),
        None,
        claims("alice"),
    );
    assert_eq!(send_status(&server, &other_key).await, 401);
    let socket = format!("?token={token}");
    let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws{socket}", server.addr))
        .await
        .unwrap();
    drop(stream);
}

#[tokio::test]
async fn an_es256_public_key_given_as_text_verifies() {
    let server = TestServer::start_with(&[("JWT_PUBLIC_KEY", &key_file("ec-public.pem"))]).await;
    let token = sign(
        Algorithm::ES256,
        &key_file("ec-private.pem"),
        None,
        claims("alice"),
    );
    assert_eq!(send_status(&server, &token).await, 202);
    let wrong_key = sign(
        Algorithm::ES256,
        &key_file("ec2-private.pem"),
        None,
        claims("alice"),
    );
    assert_eq!(send_status(&server, &wrong_key).await, 401);
}

/// A stand-in identity service: serves whatever JWKS document the test puts in it.
async fn jwks_server(document: Arc<Mutex<String>>) -> String {
    let service = IdentityService {
        document,
        ..IdentityService::default()
    };
    service.start().await
}

/// The identity service's side of the test: its document, and once `hang` is set, requests it
/// accepts and never answers.
#[derive(Clone, Default)]
struct IdentityService {
    document: Arc<Mutex<String>>,
    hang: Arc<AtomicBool>,
    /// Requests received.
    requests: Arc<AtomicUsize>,
    /// Hanging requests whose caller gave up (their connection closed).
    abandoned: Arc<AtomicUsize>,
}

/// Counts a hanging request abandoned when the server drops it.
struct Hanging(Arc<AtomicUsize>);

impl Drop for Hanging {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl IdentityService {
    /// Listens on a port of its own; the JWKS document's URL.
    async fn start(&self) -> String {
        let app = Router::new()
            .route(
                "/jwks",
                get(|State(service): State<IdentityService>| async move {
                    service.requests.fetch_add(1, Ordering::SeqCst);
                    if service.hang.load(Ordering::SeqCst) {
                        let _hanging = Hanging(service.abandoned.clone());
                        std::future::pending::<()>().await;
                    }
                    service.document.lock().unwrap().clone()
                }),
            )
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn jwks_keys_are_chosen_by_kid_and_a_rotated_key_is_fetched() {
    let document = Arc::new(Mutex::new(key_file("jwks.json")));
    let url = jwks_server(document.clone()).await;
    let server = TestServer::start_with(&[("JWKS_URL", &url)]).await;

    let rsa = sign(
        Algorithm::RS256,
        &key_file("rsa-private.pem"),
        Some("rsa-1"),
        claims("alice"),
    );
    let ec = sign(
        Algorithm::ES256,
        &key_file("ec-private.pem"),
        Some("ec-1"),
        claims("alice"),
    );
    assert_eq!(send_status(&server, &rsa).await, 202);
    assert_eq!(send_status(&server, &ec).await, 202);
    let no_kid = sign(
        Algorithm::ES256,
        &key_file("ec-private.pem"),
        None,
        claims("alice"),
    );
    assert_eq!(send_status(&server, &no_kid).await, 401);
    let wrong_kid = sign(
        Algorithm::ES256,
        &key_file("ec-private.pem"),
        Some("rsa-1"),
        claims("alice"),
    );
    assert_eq!(send_status(&server, &wrong_kid).await, 401);

    // The identity service rotates to a new key: tokens signed with it are refused until the
    // document has it, then accepted without restarting chatd.
    let rotated = sign(
        Algorithm::ES256,
        &key_file("ec2-private.pem"),
        Some("ec-2"),
        claims("alice"),
    );
    assert_eq!(send_status(&server, &rotated).await, 401);
    *document.lock().unwrap() = key_file("jwks-rotated.json");
    eventually("the rotated key is fetched", || async {
        (send_status(&server, &rotated).await == 202).then_some(())
    })
    .await;
}

/// The identity service goes away mid-flight: a fetch it accepts and never answers. Tokens
/// whose `kid` is cached are verified without waiting for it, an unknown `kid` is refused at
/// once rather than after the fetch's timeout, and only one fetch is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_identity_service_delays_no_token_with_a_cached_kid() {
    // chatd's fetch timeout: a send that waited for the hanging fetch would take the rest of
    // it (about 4 s here), and the fetch would have ended (`abandoned`) before it was answered.
    const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
    // Far above what 50 concurrent sends take on a busy 2-core machine in a debug build (RS256
    // verification included: 0.1-0.3 s for the slowest), far below waiting for the fetch. 100 ms
    // would measure the machine's load rather than the identity service.
    const PER_SEND: Duration = Duration::from_secs(1);
    // chatd's grace for a young fetch: an unknown kid refused faster than this did not wait.
    const AT_ONCE: Duration = Duration::from_millis(500);
    let service = IdentityService {
        document: Arc::new(Mutex::new(key_file("jwks.json"))),
        ..IdentityService::default()
    };
    let url = service.start().await;
    let server = TestServer::start_with(&[("JWKS_URL", &url)]).await;
    let cached = sign(
        Algorithm::RS256,
        &key_file("rsa-private.pem"),
        Some("rsa-1"),
        claims("alice"),
    );
    assert_eq!(send_status(&server, &cached).await, 202);
    assert_eq!(service.requests(), 1, "the first token fetched the keys");

    // The identity service hangs. A token with a kid nobody published asks chatd to fetch
    // again (as soon as the 2 s between fetches allow): that fetch never ends.
    service.hang.store(true, Ordering::SeqCst);
    let unknown = sign(
        Algorithm::ES256,
        &key_file("ec2-private.pem"),
        Some("ec-unpublished"),
        claims("alice"),
    );
    let trigger_refused_in = eventually("an unknown kid starts a fetch that hangs", || async {
        let started = Instant::now();
        assert_eq!(send_status(&server, &unknown).await, 401);
        let refused_in = started.elapsed();
        assert!(
            refused_in < FETCH_TIMEOUT / 2,
            "an unknown kid waited {refused_in:?} for a hanging fetch"
        );
        (service.requests() == 2).then_some(refused_in)
    })
    .await;
    eprintln!("the unknown kid that started the hanging fetch: refused in {trigger_refused_in:?}");

    let sends = join_all((0..50).map(|_| async {
        let started = Instant::now();
        let status = send_status(&server, &cached).await;
        (status, started.elapsed())
    }))
    .await;
    let mut durations: Vec<Duration> = sends
        .iter()
        .map(|&(status, took)| {
            assert_eq!(status, 202);
            took
        })
        .collect();
    durations.sort();
    eprintln!(
        "50 sends with a cached kid while the fetch hangs: median {:?}, slowest {:?}",
        durations[25], durations[49]
    );
    assert!(
        durations[49] < PER_SEND,
        "the slowest send took {:?}",
        durations[49]
    );

    // The fetch still hangs: an unknown kid is refused at once now, and fetches nothing more.
    let started = Instant::now();
    assert_eq!(send_status(&server, &unknown).await, 401);
    let refused_in = started.elapsed();
    eprintln!("an unknown kid during the outage: refused in {refused_in:?}");
    assert!(refused_in < AT_ONCE, "refused after {refused_in:?}");
    assert_eq!(service.requests(), 2, "one fetch at a time");
    assert_eq!(
        service.abandoned.load(Ordering::SeqCst),
        0,
        "every answer came while the fetch was still hanging"
    );
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let server = TestServer::start_with(&[
        ("JWT_ISSUER", "https://id.example"),
        ("JWT_AUDIENCE", "chatd"),
    ])
    .await;
    let secret = server.secret().to_string();
    let with = |extra: serde_json::Value| {
        let mut claims = claims("alice");
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    assert_eq!(
        send_status(&server, &with(json!({}))).await,
        401,
        "no iss, no aud"
    );
    assert_eq!(
        send_status(
            &server,
            &with(json!({"iss": "https://evil.example", "aud": "chatd"}))
        )
        .await,
        401
    );
    assert_eq!(
        send_status(
            &server,
            &with(json!({"iss": "https://id.example", "aud": "other"}))
        )
        .await,
        401
    );
    assert_eq!(
        send_status(
            &server,
            &with(json!({"iss": "https://id.example", "aud": "chatd"}))
        )
        .await,
        202
    );
}

/// A token that is not valid yet (`nbf`) or claims to be issued later (`iat`) than now plus the
/// 60 s leeway is refused on every door, whoever signed it; within the leeway it passes.
#[tokio::test]
async fn tokens_from_the_future_are_refused_over_http_and_on_the_upgrade() {
    let shared = TestServer::start().await;
    let secret = shared.secret().to_string();
    let sign_shared = move |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    refuses_the_future(&shared, &sign_shared).await;

    let external = TestServer::start_with(&[("JWT_PUBLIC_KEY", &key_file("ec-public.pem"))]).await;
    let private = key_file("ec-private.pem");
    let sign_external = move |claims| sign(Algorithm::ES256, &private, None, claims);
    refuses_the_future(&external, &sign_external).await;
}

async fn refuses_the_future(server: &TestServer, sign: &dyn Fn(serde_json::Value) -> String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (claim, why) in [
        ("nbf", "not valid yet (nbf is in the future)"),
        ("iat", "issued in the future (iat)"),
    ] {
        let at = |offset: u64| {
            let mut claims = claims("alice");
            claims[claim] = json!(now + offset);
            sign(claims)
        };
        let future = at(3600);
        let response = server
            .http
            .post(server.url("/api/messages"))
            .bearer_auth(&future)
            .json(&json!({ "participants": ["alice", "bob"], "content": "hi" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{claim}");
        let body: serde_json::Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(why), "{claim}: {error}");
        assert_eq!(server.ws_refused(&format!("?token={future}")).await, 401);

        let skewed = at(30);
        assert_eq!(
            send_status(server, &skewed).await,
            202,
            "{claim} within the leeway"
        );
        let (socket, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws?token={skewed}", server.addr))
                .await
                .unwrap();
        drop(socket);
    }
}
