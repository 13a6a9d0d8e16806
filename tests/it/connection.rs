//! The HTTP/1 connection layer: subscribe requests are driven by the service's own streaming
//! path, everything else by hyper; both must behave like one HTTP server.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::app::PUBLISH_TOKEN;
use crate::support::{RedisServer, TestApp, eventually, token};

/// Reads until `needle` has arrived (or the connection ends), returning everything read.
async fn read_until(socket: &mut TcpStream, needle: &str) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains(needle) {
        let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {needle:?} within 10 s; got {:?}",
                    String::from_utf8_lossy(&received)
                )
            })
            .expect("read from the service");
        if read == 0 {
            break;
        }
        received.extend_from_slice(&buf[..read]);
    }
    String::from_utf8(received).expect("UTF-8 from the service")
}

async fn open_streams(app: &TestApp) -> f64 {
    app.metric("sse_notify_open_streams").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_arriving_in_pieces_is_streamed_and_a_closed_client_is_noticed() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut socket = app.connect().await;
    let request = format!(
        "GET /notification/subscribe?access_token={} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 0-0\r\n\r\n",
        token("7")
    );
    for piece in request.as_bytes().chunks(9) {
        socket.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let head = read_until(&mut socket, "event: connected").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    let id = app.publish("7", json!("hello")).await;
    let frame = read_until(&mut socket, &format!("id: {id}\n")).await;
    assert!(frame.contains("data: "), "{frame}");
    assert_eq!(open_streams(&app).await, 1.0);

    // The client goes away while its stream is idle: the stream is closed without a write.
    drop(socket);
    eventually("the stream to close", || async {
        (open_streams(&app).await == 0.0).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_requests_and_keep_alive_connections_are_served_as_before() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut socket = app.connect().await;
    // A publish, then a subscribe on the same keep-alive connection.
    let body = r#"{"member_id":"8","type":"t","content":1}"#;
    let publish = format!(
        "POST /notifications HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PUBLISH_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(publish.as_bytes()).await.unwrap();
    let answer = read_until(&mut socket, "}").await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let subscribe = format!(
        "GET /notification/subscribe?access_token={}&lastEventId=0-0 HTTP/1.1\r\nHost: x\r\n\r\n",
        token("8")
    );
    socket.write_all(subscribe.as_bytes()).await.unwrap();
    let stream = read_until(&mut socket, "event: notification").await;
    assert!(stream.contains("HTTP/1.1 200 OK"), "{stream}");

    // A rejected subscribe is a whole response with its JSON body, and the connection closes.
    let mut socket = app.connect().await;
    socket
        .write_all(b"GET /notification/subscribe HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{answer}"
    );
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{answer}"
    );
    assert!(body.contains(r#""error":"unauthorized""#), "{answer}");

    // Garbage is hyper's to answer.
    let mut socket = app.connect().await;
    socket.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let answer = read_until(&mut socket, "\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    app.stop().await;
}

/// A response head as a comparable map: header names (lowercase) to values, without what differs
/// by design between the paths (framing, `connection`, the `date` value; `date` must be there).
fn head_fields(head: &str) -> (String, std::collections::BTreeMap<String, String>) {
    let mut lines = head.split("\r\n");
    let status = lines.next().expect("a status line").to_owned();
    let mut fields = std::collections::BTreeMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(": ").expect("a header line");
        let name = name.to_ascii_lowercase();
        let value = if name == "date" {
            "(present)".to_owned()
        } else {
            value.to_owned()
        };
        if !["content-length", "transfer-encoding", "connection"].contains(&name.as_str()) {
            fields.insert(name, value);
        }
    }
    (status, fields)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_answer_the_same_request_with_the_same_head() {
    let redis = RedisServer::start();
    let origin = "https://app.example";
    let app = TestApp::start(&redis.url(), &["--cors-origins", origin]).await;
    let jwt = token("9");
    let cases = [
        (
            "no token",
            "/notification/subscribe".to_owned(),
            "HTTP/1.1 401",
        ),
        (
            "bad position",
            format!("/notification/subscribe/?access_token={jwt}&lastEventId=nope"),
            "HTTP/1.1 400",
        ),
        (
            "a stream",
            format!("/notification/subscribe?access_token={jwt}&lastEventId=0-0"),
            "HTTP/1.1 200",
        ),
    ];
    for (what, target, status) in cases {
        let mut heads = Vec::new();
        // `Content-Length: 0` is a head the streaming path leaves to hyper: same request, other path.
        for extra in ["", "Content-Length: 0\r\n"] {
            let mut socket = app.connect().await;
            let request =
                format!("GET {target} HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n{extra}\r\n");
            socket.write_all(request.as_bytes()).await.unwrap();
            let received = read_until(&mut socket, "\r\n\r\n").await;
            let head = received.split("\r\n\r\n").next().unwrap().to_owned();
            assert!(head.starts_with(status), "{what} {extra:?}: {head}");
            assert!(
                head.to_ascii_lowercase().contains("\r\ndate: "),
                "{what} {extra:?}: {head}"
            );
            // Which path answered: only the streaming one closes after its response.
            assert_eq!(
                head.contains("\r\nconnection: close"),
                extra.is_empty(),
                "{what} {extra:?}: {head}"
            );
            heads.push(head_fields(&head));
        }
        assert_eq!(heads[0], heads[1], "{what}: streaming path vs hyper");
    }
    app.stop().await;
}
