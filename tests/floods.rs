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
