//! Identity: where tokens come from, what is refused, and that a member sees only its own.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::{now_secs, token_with};
use crate::support::sse::SseStream;
use crate::support::{RedisServer, TestApp, WAIT, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_forged_and_expired_tokens_get_a_json_401() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let forged = sse_notify::http::auth::sign_hs256(&json!({"sub": "42"}), b"not-the-secret");
    let expired = token_with(json!({"sub": "42", "exp": now_secs() - 5}));
    let bad_member = token_with(json!({"sub": "42:admin"}));
    for bearer in [
        None,
        Some("garbage"),
        Some(forged.as_str()),
        Some(expired.as_str()),
        Some(bad_member.as_str()),
    ] {
        let response = app
            .subscribe_response("/notification/subscribe", bearer, &[])
            .await;
        assert_eq!(response.status(), 401, "{bearer:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_read_from_header_cookie_and_query_and_the_header_wins() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let by_cookie = app
        .subscribe_response(
            "/notification/subscribe",
            None,
            &[(
                "cookie",
                &format!("theme=dark; access_token={}", token("c")),
            )],
        )
        .await;
    assert_eq!(by_cookie.status(), 200);
    let by_query = app
        .subscribe_response(
            &format!("/notification/subscribe?access_token={}", token("q")),
            None,
            &[],
        )
        .await;
    assert_eq!(by_query.status(), 200);
    // The header wins over cookie and query: the stream is member h's.
    let mut by_header = SseStream::new(
        app.subscribe_response(
            &format!("/notification/subscribe?access_token={}", token("q")),
            Some(&token("h")),
            &[],
        )
        .await,
    );
    by_header.next(WAIT).await.unwrap();
    assert_eq!(by_header.next(WAIT).await.unwrap().json()["member_id"], "h");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_token_never_reaches_the_logs_even_at_trace_level() {
    use std::io::{Read as _, Write as _};

    let redis = RedisServer::start();
    let port = crate::support::redis::free_port();
    let log_path = std::env::temp_dir().join(format!("sse-notify-log-{}", uuid::Uuid::new_v4()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sse-notify"))
        .env_clear()
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", redis.url())
        .env("JWT_SECRET", crate::support::app::JWT_SECRET)
        .env("RUST_LOG", "trace")
        .stderr(log)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    crate::support::eventually("the binary to be ready", || async {
        let ready = client.get(format!("{url}/readyz")).send().await;
        ready.is_ok_and(|r| r.status().is_success()).then_some(())
    })
    .await;
    let good = token("logged");
    let expired = token_with(json!({"sub": "logged", "exp": now_secs() - 5}));
    // The streaming path, hyper's path (`Content-Length: 0` sends a subscribe there), a refused
    // token, and a trailing-slash URL.
    for (target, extra) in [
        (format!("/notification/subscribe?access_token={good}"), ""),
        (
            format!("/notification/subscribe?access_token={good}"),
            "Content-Length: 0\r\n",
        ),
        (
            format!("/notification/subscribe/?access_token={expired}"),
            "",
        ),
    ] {
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        write!(socket, "GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
        let mut answer = [0u8; 512];
        let read = socket.read(&mut answer).unwrap();
        assert!(answer[..read].starts_with(b"HTTP/1.1 "), "{target}");
    }
    let _ = child.kill();
    let _ = child.wait();
    let logged = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(
        logged.contains("/notification/subscribe"),
        "requests are logged: {logged}"
    );
    for jwt in [&good, &expired] {
        let signature = jwt.rsplit('.').next().unwrap();
        assert!(!logged.contains(signature), "a token reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_never_sees_another_members_notifications() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let secret = app.publish("victim", json!("private")).await;
    // Asking for someone else's stream by parameter does nothing in jwt mode: the token decides.
    let mut stream = app
        .subscribe(
            "attacker",
            "?member_id=victim&lastEventId=0-0",
            &[("member_id", "victim")],
        )
        .await;
    stream.next(WAIT).await.unwrap();
    assert_eq!(
        stream.next(WAIT).await.unwrap().json()["member_id"],
        "attacker"
    );
    let mine = app.publish("attacker", json!("mine")).await;
    let event = stream.next_notification(WAIT).await;
    assert_eq!(event.id, Some(mine));
    assert!(!stream.raw.contains(&secret) && !stream.raw.contains("private"));
    let (_, history) = app
        .get_json("/notifications?member_id=victim", "attacker")
        .await;
    assert!(
        history["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["member_id"] == "attacker")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_ends_when_its_token_expires() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let short = token_with(json!({"sub": "42", "exp": now_secs() + 2}));
    let mut stream = SseStream::new(
        app.subscribe_response("/notification/subscribe", Some(&short), &[])
            .await,
    );
    let frames = stream.until_closed(Duration::from_secs(6)).await;
    assert!(stream.ended);
    assert_eq!(
        frames.len(),
        2,
        "retry and connected, then the close: {frames:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_mode_trusts_the_member_id_header_or_query() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &["--auth-mode", "gateway"]).await;
    let mut by_header = SseStream::new(
        app.subscribe_response("/notification/subscribe", None, &[("member_id", "g1")])
            .await,
    );
    by_header.next(WAIT).await.unwrap();
    assert_eq!(
        by_header.next(WAIT).await.unwrap().json()["member_id"],
        "g1"
    );
    let mut by_query = SseStream::new(
        app.subscribe_response("/notification/subscribe?member_id=g2", None, &[])
            .await,
    );
    by_query.next(WAIT).await.unwrap();
    assert_eq!(by_query.next(WAIT).await.unwrap().json()["member_id"], "g2");
    for path in [
        "/notification/subscribe",
        "/notification/subscribe?member_id=a%20b",
    ] {
        assert_eq!(
            app.subscribe_response(path, None, &[]).await.status(),
            401,
            "{path}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_mode_refuses_a_bad_or_doubled_header_instead_of_trusting_the_query() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &["--auth-mode", "gateway"]).await;
    let send = |headers: Vec<(&'static str, reqwest::header::HeaderValue)>| {
        let mut request = app
            .client
            .get(format!("{}/notification/subscribe?member_id=bob", app.url));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let utf8 = reqwest::header::HeaderValue::from_bytes("josé".as_bytes()).unwrap();
    let invalid = reqwest::header::HeaderValue::from_static("a b");
    let alice = reqwest::header::HeaderValue::from_static("alice");
    for (case, headers) in [
        ("a header that is not ASCII", vec![("member_id", utf8)]),
        (
            "a header that is not a member id",
            vec![("member_id", invalid)],
        ),
        (
            "two headers that differ",
            vec![
                ("member_id", alice.clone()),
                (
                    "member_id",
                    reqwest::header::HeaderValue::from_static("bob"),
                ),
            ],
        ),
    ] {
        let response = send(headers).await.expect("a response");
        assert_eq!(response.status(), 401, "{case}: bob's stream was served");
    }
    // The same value twice is one word.
    let response = send(vec![("member_id", alice.clone()), ("member_id", alice)])
        .await
        .expect("a response");
    assert_eq!(response.status(), 200);
    let mut stream = SseStream::new(response);
    stream.next(WAIT).await.unwrap();
    assert_eq!(
        stream.next(WAIT).await.unwrap().json()["member_id"],
        "alice"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_audience_and_issuer_are_checked_and_tokens_without_exp_are_counted() {
    let redis = RedisServer::start();
    let app = TestApp::start(
        &redis.url(),
        &[
            "--jwt-audience",
            "notify",
            "--jwt-issuer",
            "https://id.example",
        ],
    )
    .await;
    let status = |claims: serde_json::Value| {
        let token = token_with(claims);
        let app = &app;
        async move {
            app.subscribe_response("/notification/subscribe", Some(&token), &[])
                .await
                .status()
        }
    };
    assert_eq!(
        status(json!({"sub": "a1", "exp": now_secs() + 60})).await,
        401,
        "no aud, no iss"
    );
    assert_eq!(
        status(json!({"sub": "a1", "aud": "other", "iss": "https://id.example"})).await,
        401
    );
    assert_eq!(
        status(json!({"sub": "a1", "aud": ["x", "notify"], "iss": "https://id.example"})).await,
        200
    );
    assert_eq!(app.metric("sse_notify_tokens_without_exp_total").await, 1.0);
    app.stop().await;
}
