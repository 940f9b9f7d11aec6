//! Floods of sockets: per-user and total caps.

mod common;

use common::TestServer;

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
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    tokio::time::timeout(common::DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .expect("a clean read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_connection_that_never_sends_its_headers_is_closed() {
    use tokio::io::AsyncWriteExt;
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
    use tokio::io::AsyncWriteExt;
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
