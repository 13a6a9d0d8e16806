//! Hostile clients: oversized heads, a client that keeps sending after its request, one member's
//! token opening stream after stream, more connections than the instance keeps room for, and
//! Redis targets that cannot work. Each limit holds on both HTTP paths (the streaming one and
//! hyper's).

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::sse::SseStream;
use crate::support::{RedisServer, TestApp, WAIT, token};

/// Everything the service sends until it closes the connection (bounded by `WAIT`).
async fn read_to_close(socket: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, socket.read_to_end(&mut received)).await;
    assert!(
        read.is_ok(),
        "the connection stayed open; got {:?}",
        String::from_utf8_lossy(&received)
    );
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_on_both_paths() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let padding = "x".repeat(40 * 1024);
    for path in ["/notifications", "/notification/subscribe"] {
        let mut socket = app.connect().await;
        let head = format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Pad: {padding}");
        // The head never ends: the service must not keep reading it into memory.
        let _ = socket.write_all(head.as_bytes()).await;
        let answer = read_to_close(&mut socket).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{path}: {answer:?}");
    }
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut socket = app.connect().await;
    let head = format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}\r\n");
    socket.write_all(head.as_bytes()).await.expect("write");
    let answer = read_to_close(&mut socket).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "100 headers: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_sending_after_its_request_is_dropped() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut socket = app.connect().await;
    let head = format!(
        "GET /notification/subscribe HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
        token("blaster")
    );
    socket.write_all(head.as_bytes()).await.expect("write");
    // The stream starts; then the client blasts bytes the service has no use for.
    let mut first = [0u8; 512];
    let n = socket.read(&mut first).await.expect("the stream's head");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let blast = vec![b'z'; 64 * 1024];
    let _ = tokio::time::timeout(WAIT, socket.write_all(&blast)).await;
    read_to_close(&mut socket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_cannot_hold_more_than_its_cap_and_the_oldest_stream_makes_way() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &["--max-streams-per-member", "2"]).await;
    let mut oldest = app.subscribe("tabs", "", &[]).await;
    oldest.next(WAIT).await.expect("retry");
    oldest.next(WAIT).await.expect("connected");
    let mut second = app.subscribe("tabs", "", &[]).await;
    second.next(WAIT).await.expect("retry");
    second.next(WAIT).await.expect("connected");
    let mut third = app.subscribe("tabs", "", &[]).await;
    third.next(WAIT).await.expect("retry");
    third.next(WAIT).await.expect("connected");
    // The oldest ends (its browser reconnects); the newest two are served.
    oldest.until_closed(WAIT).await;
    let id = app.publish("tabs", serde_json::json!("to both")).await;
    for stream in [&mut second, &mut third] {
        assert_eq!(
            stream.next_notification(WAIT).await.id.as_deref(),
            Some(id.as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_streams_a_subscribe_is_told_to_retry_and_health_checks_still_answer() {
    let redis = RedisServer::start();
    let app = TestApp::start(
        &redis.url(),
        &["--max-streams", "2", "--max-connections", "8"],
    )
    .await;
    let mut open = Vec::new();
    for member in ["s1", "s2"] {
        let mut stream = app.subscribe(member, "", &[]).await;
        stream.next(WAIT).await.expect("retry");
        assert_eq!(
            stream.next(WAIT).await.expect("connected").event.as_deref(),
            Some("connected")
        );
        open.push(stream);
    }
    let response = app
        .subscribe_response("/notification/subscribe", Some(&token("s3")), &[])
        .await;
    assert_eq!(
        response.status(),
        200,
        "a native EventSource must not give up"
    );
    let frames = SseStream::new(response).until_closed(WAIT).await;
    assert_eq!(frames.len(), 1, "retry: only, then close: {frames:?}");
    assert!(frames[0].retry.is_some());
    let health = app
        .client
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_idle_sockets_make_way_and_served_ones_refuse_the_newcomer() {
    let redis = RedisServer::start();
    let app = TestApp::start(
        &redis.url(),
        &["--max-connections", "3", "--max-streams", "3"],
    )
    .await;
    // The readiness check's keep-alive connection holds one slot; idle sockets (no request
    // sent) take the others...
    let mut idle = vec![app.connect().await, app.connect().await];
    // ...and a health check still gets in: the oldest idle socket is closed for it.
    let fresh = reqwest::Client::new();
    let health = fresh
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    assert_eq!(
        read_to_close(&mut idle[0]).await,
        "",
        "the oldest idle socket made way"
    );
    drop(idle);
    drop(fresh);
    crate::support::eventually("only the pool's connection left", || async {
        (app.metric("sse_notify_open_connections").await == 1.0).then_some(())
    })
    .await;
    // Every slot held by a connection being served (streams): the newcomer is refused.
    let mut streams = Vec::new();
    for member in ["c1", "c2", "c3"] {
        let mut stream = app.subscribe(member, "", &[]).await;
        stream.next(WAIT).await.expect("retry");
        stream.next(WAIT).await.expect("connected");
        streams.push(stream);
    }
    let mut refused = app.connect().await;
    let _ = refused
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    assert_eq!(
        read_to_close(&mut refused).await,
        "",
        "closed without an answer"
    );
}

#[test]
fn a_redis_target_that_cannot_work_refuses_to_start() {
    // TLS certificates for a plain-text URL: the operator meant TLS and would not get it.
    let pki = crate::support::tls::Pki::new();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sse-notify"))
        .env_clear()
        .env("AUTH_MODE", "gateway")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("REDIS_URL", "redis://user:secret@redis.example:6380")
        .env("REDIS_TLS_CA_FILE", pki.path("ca.pem"))
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("REDIS_URL") && stderr.contains("rediss://") && !stderr.contains("secret"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_arriving_gets_408_and_the_connection_closes() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut socket = app.connect().await;
    let head = format!(
        "POST /notifications HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{{",
        crate::support::app::PUBLISH_TOKEN
    );
    socket.write_all(head.as_bytes()).await.expect("write");
    let mut received = Vec::new();
    // The request deadline is 30 s; the connection must be closed shortly after.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(45),
        socket.read_to_end(&mut received),
    )
    .await;
    assert!(
        read.is_ok(),
        "still open: {:?}",
        String::from_utf8_lossy(&received)
    );
    let answer = String::from_utf8_lossy(&received);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("request_timeout"), "{answer:?}");
}

/// Open connections, counted through a fresh client (the pool's would be counted too).
async fn open_connections(app: &TestApp) -> f64 {
    app.metric_through(&reqwest::Client::new(), "sse_notify_open_connections")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_outgrows_the_streaming_path_keeps_its_one_deadline() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut socket = app.connect().await;
    let started = std::time::Instant::now();
    socket
        .write_all(b"GET /notification/subscribe HTTP/1.1\r\nHost: t\r\n")
        .await
        .expect("write");
    // 1 KiB of header every 1.5 s: past the streaming path's 16 KiB at ~24 s, then on and on.
    let line = format!("X-Slow: {}\r\n", "s".repeat(1014));
    let closed = loop {
        if socket.write_all(line.as_bytes()).await.is_err() {
            break started.elapsed();
        }
        let mut probe = [0u8; 1024];
        match tokio::time::timeout(
            std::time::Duration::from_millis(1500),
            socket.read(&mut probe),
        )
        .await
        {
            Ok(Ok(0) | Err(_)) => break started.elapsed(),
            Ok(Ok(_)) => {} // a 408/431 answer; the close follows
            Err(_) => {}
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(50),
            "still open after 50 s"
        );
    };
    assert!(
        closed < std::time::Duration::from_secs(40),
        "the head got a second deadline: closed after {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_stream_hyper_serves_is_dropped() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let publisher = app.publisher();
    publisher.publish("warm-up", serde_json::json!(0)).await; // the pool's connection, counted
    let before = open_connections(&app).await;
    let mut socket = app.connect().await;
    // HTTP/1.0: hyper serves it (the streaming path takes HTTP/1.1 only).
    let head = format!(
        "GET /notification/subscribe HTTP/1.0\r\nAuthorization: Bearer {}\r\n\r\n",
        token("stalled")
    );
    socket.write_all(head.as_bytes()).await.expect("write");
    let big = "y".repeat(30_000);
    for i in 0..400 {
        publisher
            .publish("stalled", serde_json::json!({ "i": i, "pad": big }))
            .await;
    }
    // The client reads nothing: its stream and connection must be dropped (30 s after its socket
    // filled), not held for good.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(75);
    while app.metric("sse_notify_open_streams").await > 0.0 || open_connections(&app).await > before
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled connection is still open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    drop(socket);
}
