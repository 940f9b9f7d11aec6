//! Floods of sockets and connections: per-user and total caps, header deadlines, and the
//! accept loop's caps on connections open in all and per client address.

use std::net::{IpAddr, Ipv4Addr};

use crate::common::{DEADLINE, TestServer, eventually, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[tokio::test]
async fn a_user_may_open_only_so_many_sockets() {
    let server = TestServer::start_with(&[("MAX_SOCKETS_PER_USER", "3")]).await;
    let mut alice: Vec<_> = Vec::new();
    for _ in 0..3 {
        alice.push(server.ws("alice").await);
    }
    let token = server.token("alice");
    assert_eq!(server.ws_refused(&format!("?token={token}")).await, 429);
    let _bob = server.ws("bob").await;
    alice.pop().unwrap().close().await;
    server.await_connections("alice", 2).await;
    alice.push(server.ws("alice").await);
    assert_eq!(
        server.connections(&["alice", "bob"]).await,
        serde_json::json!({"alice": 3, "bob": 1})
    );
}

#[tokio::test]
async fn the_server_opens_only_so_many_sockets() {
    let server = TestServer::start_with(&[("MAX_CONNECTIONS", "4")]).await;
    let mut open = Vec::new();
    for i in 0..4 {
        open.push(server.ws(&format!("user{i}")).await);
    }
    let token = server.token("latecomer");
    assert_eq!(server.ws_refused(&format!("?token={token}")).await, 503);
    open.pop().unwrap().close().await;
    server.await_connections("user3", 0).await;
    let _latecomer = server.ws("latecomer").await;
}

/// Reads until the server closes the connection, and returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .expect("a clean read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_connection_that_never_sends_its_headers_is_closed() {
    let server = TestServer::start_with(&[("HTTP_HEADER_TIMEOUT", "300ms")]).await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut trickling = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    trickling
        .write_all(b"GET /health HTTP/1.1\r\nHost: chatd\r\n")
        .await
        .unwrap();
    read_to_close(&mut silent).await;
    let answer = read_to_close(&mut trickling).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    assert_eq!(
        server.health().await["status"],
        "ok",
        "the server keeps serving"
    );
}

#[tokio::test]
async fn a_request_whose_body_never_arrives_gets_408() {
    let server = TestServer::start_with(&[("HTTP_REQUEST_TIMEOUT", "300ms")]).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/messages HTTP/1.1\r\nHost: chatd\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"participants\":",
        server.token("alice")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
}

/// Another address on this machine (all of 127/8 is loopback), so a flood from it and a normal
/// client from 127.0.0.1 are different clients to the server.
const FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A connection from `from` that has sent half a request head and then nothing.
async fn half_sent_head(server: &TestServer, from: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    // Refused at accept, the server may close before this arrives: that is a refusal too.
    let _ = stream
        .write_all(b"POST /api/messages HTTP/1.1\r\nHost: chatd\r\n")
        .await;
    stream
}

/// Everything the server sends until it closes, or `None` if it reset the connection.
async fn answer(mut stream: TcpStream) -> Option<String> {
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

fn assert_503(answer: &str, error: &str) {
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
    let body: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).expect("a JSON body");
    assert!(body["error"].as_str().unwrap().contains(error), "{answer}");
}

/// Held by the tests that get connections refused as pending: the refusals are counted for the
/// whole process, and the flood test counts exactly its own.
static PENDING_REFUSALS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn refused(client: &reqwest::Client, server: &TestServer, reason: &str) -> f64 {
    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric(
        &text,
        &format!("chat_http_connections_refused_total{{reason=\"{reason}\"}}"),
    )
}

/// A slowloris from one address: the server keeps that address's share of slow connections,
/// answers the rest 503 and closes them, and everyone else is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_header_flood_from_one_address_is_capped_and_others_are_served() {
    const FLOOD: usize = 200;
    const SHARE: usize = 64;
    let _pending = PENDING_REFUSALS.lock().await;
    // The header deadline is far away, so only the cap can end a flood connection here.
    let server = TestServer::start_with(&[("HTTP_HEADER_TIMEOUT", "300s")]).await;
    let before = refused(&server.http, &server, "pending_per_client").await;
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        flood.push(tokio::spawn(answer(half_sent_head(&server, FLOODER).await)));
    }
    eventually(
        "every flood connection past the share is closed",
        || async {
            let ended = flood.iter().filter(|reader| reader.is_finished()).count();
            (ended >= FLOOD - SHARE).then_some(())
        },
    )
    .await;
    let mut kept = Vec::new();
    let mut answered = 0;
    for reader in flood {
        if !reader.is_finished() {
            kept.push(reader);
            continue;
        }
        // Refused at accept, a connection may be reset before it reads its 503.
        if let Some(answer) = reader.await.unwrap() {
            assert_503(&answer, "have not sent their request yet");
            answered += 1;
        }
    }
    assert_eq!(kept.len(), SHARE, "the address keeps exactly its share");
    assert!(answered > 0, "the refused connections are told why");

    // Someone else on this machine is served as usual while the flood holds its share ...
    server
        .send_ok("alice", &["alice", "bob"], "still here")
        .await;
    // ... while the flooding address is refused at once, with a 503.
    let next = TcpSocket::new_v4().unwrap();
    next.bind((FLOODER, 0).into()).unwrap();
    let mut next = next.connect(server.addr).await.unwrap();
    assert_503(
        &read_to_close(&mut next).await,
        "have not sent their request yet",
    );
    let counted = refused(&server.http, &server, "pending_per_client").await - before;
    assert_eq!(counted, (FLOOD - SHARE + 1) as f64);

    // Once the flood lets go, the address is welcome again.
    for reader in &kept {
        reader.abort();
    }
    let from_flooder = reqwest::Client::builder()
        .local_address(FLOODER)
        .build()
        .unwrap();
    eventually("the flooding address is served again", || async {
        let response = from_flooder.get(server.url("/health")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
}

/// WebSockets and keep-alive connections that sent a request never count as pending, however
/// many one address holds: its whole share stays for connections still sending their head.
#[tokio::test]
async fn connections_that_sent_their_request_do_not_count_as_pending() {
    let _pending = PENDING_REFUSALS.lock().await;
    let server = TestServer::start_with(&[("HTTP_MAX_PENDING_PER_CLIENT", "2")]).await;
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let mut sockets = Vec::new();
    for i in 0..4 {
        sockets.push(server.ws(&format!("user{i}")).await);
    }
    let _idle = [
        keep_alive(&server).await,
        keep_alive(&server).await,
        keep_alive(&server).await,
    ];
    let mut heads = Vec::new();
    for _ in 0..3 {
        heads.push(tokio::spawn(answer(half_sent_head(&server, local).await)));
    }
    // Past the grace, two half-sent heads fill the share and the third is refused. Had the
    // sockets or the keep-alive connections counted, all three would be.
    eventually("a half-sent head past the share is refused", || async {
        heads.iter().any(|head| head.is_finished()).then_some(())
    })
    .await;
    let mut probe = TcpStream::connect(server.addr).await.unwrap();
    assert_503(
        &read_to_close(&mut probe).await,
        "have not sent their request yet",
    );
    let (refused, kept): (Vec<_>, Vec<_>) = heads.into_iter().partition(|head| head.is_finished());
    assert_eq!((refused.len(), kept.len()), (1, 2));
    for head in kept {
        head.abort();
    }
    eventually("the half-sent heads' places are given back", || async {
        let response = server.http.get(server.url("/health")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    // The sockets are still served.
    server.send_ok("alice", &["alice", "user0"], "hello").await;
    assert_eq!(sockets[0].next_message().await["content"], "hello");
}

/// A connection that has sent one request and its answer, and stays open.
async fn keep_alive(server: &TestServer) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: chatd\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.ends_with(b"}\n") {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the server closed a keep-alive connection");
        answer.extend_from_slice(&chunk[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    stream
}

#[tokio::test]
async fn connections_beyond_the_total_cap_get_503_and_are_closed() {
    let server = TestServer::start_with(&[("HTTP_MAX_CONNECTIONS", "6")]).await;
    // WebSockets and keep-alive connections hold the six places.
    let mut sockets = Vec::new();
    for i in 0..3 {
        sockets.push(server.ws(&format!("user{i}")).await);
    }
    let _idle = [
        keep_alive(&server).await,
        keep_alive(&server).await,
        keep_alive(&server).await,
    ];
    let mut over = TcpStream::connect(server.addr).await.unwrap();
    assert_503(&read_to_close(&mut over).await, "too many connections open");

    // A socket that closes gives its place back.
    sockets.pop().unwrap().close().await;
    let client = reqwest::Client::new();
    eventually("a closed socket's place is free again", || async {
        let response = client.get(server.url("/health")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    assert!(refused(&client, &server, "connections").await >= 1.0);
}
