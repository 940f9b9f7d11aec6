//! Thousands of sockets opened and closed, politely or not: nothing is left behind.
//! (Its own test binary: it reads the process-wide `chat_ws_connections` gauge and counts every
//! socket opened in the process, which any other test's sockets would move.)

mod common;

use common::{TestServer, eventually};
use futures_util::{StreamExt, stream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_churn_leaves_no_socket_behind() {
    const SOCKETS: usize = 2000;
    let server = TestServer::start().await;
    stream::iter(0..SOCKETS)
        .for_each_concurrent(50, |i| {
            let server = &server;
            async move {
                let client = server.ws(&format!("user{}", i % 100)).await;
                if i % 2 == 0 {
                    client.close().await; // a close handshake
                } else {
                    drop(client); // the TCP connection just goes away
                }
            }
        })
        .await;

    eventually("every socket is gone", || async {
        (server.health().await["sockets"] == 0).then_some(())
    })
    .await;
    let metrics = server.scrape().await;
    assert!(
        metrics.lines().any(|l| l == "chat_ws_connections 0"),
        "{metrics}"
    );
    let opened = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chat_ws_connections_opened_total "))
        .unwrap();
    assert_eq!(opened, SOCKETS.to_string());
    let users: Vec<String> = (0..100).map(|i| format!("user{i}")).collect();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let counts = server.connections(&names).await;
    assert!(
        counts.as_object().unwrap().values().all(|n| n == 0),
        "{counts}"
    );
}
