//! Operations: heartbeats, health, metrics, CORS, the demo page and draining on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::redis::free_port;
use crate::support::{RedisServer, TestApp, WAIT, eventually, id_order, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_streams_get_heartbeat_comments_without_ids() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &["--heartbeat-secs", "1"]).await;
    let mut stream = app.subscribe("42", "", &[]).await;
    stream.next(WAIT).await.unwrap();
    stream.next(WAIT).await.unwrap();
    let heartbeat = stream.next(Duration::from_secs(3)).await.unwrap();
    assert_eq!(heartbeat.comment.as_deref(), Some("heartbeat"));
    assert_eq!(heartbeat.id, None);
    assert!(
        stream.raw.ends_with("\n\n: heartbeat\n\n"),
        "{:?}",
        stream.raw
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_demo_and_unknown_routes() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let get = |path: &str| app.client.get(format!("{}{path}", app.url)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");

    let _stream = app.subscribe("42", "", &[]).await;
    app.publish("42", json!(1)).await;
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for name in [
        "sse_notify_open_streams 1",
        "sse_notify_notifications_published_total 1",
        "sse_notify_slow_client_disconnects_total",
        "sse_notify_publish_duration_seconds_bucket",
        "sse_notify_delivery_latency_seconds_count",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let demo = get("/").await.unwrap();
    assert_eq!(demo.status(), 200);
    // The demo page is an app on the browser client, imported from this service.
    assert!(
        demo.text()
            .await
            .unwrap()
            .contains(r#"import { connect } from "/client/sse-notify.js";"#)
    );
    let missing = get("/nope").await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"], "not_found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_configured_origins_with_credentials_and_polyfill_preflights() {
    let redis = RedisServer::start();
    let app = TestApp::start(
        &redis.url(),
        &["--cors-origins", "http://app.test:3000,http://other.test"],
    )
    .await;
    let preflight = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/notification/subscribe", app.url),
        )
        .header("origin", "http://app.test:3000")
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization,last-event-id,cache-control,x-requested-with",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let headers = preflight.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://app.test:3000"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for header in [
        "authorization",
        "last-event-id",
        "cache-control",
        "x-requested-with",
    ] {
        assert!(allowed.contains(header), "{header} not in {allowed}");
    }

    let response = app
        .subscribe_response(
            "/notification/subscribe",
            Some(&token("42")),
            &[("origin", "http://app.test:3000")],
        )
        .await;
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "http://app.test:3000"
    );
    let foreign = app
        .subscribe_response(
            "/notification/subscribe",
            Some(&token("42")),
            &[("origin", "http://evil.test")],
        )
        .await;
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // A backend's publish (no Origin) still gets what the CORS layer adds to every response.
    let published = app
        .publish_raw(json!({"member_id": "42", "content": 1}), &[])
        .await;
    assert_eq!(published.status(), 201);
    assert_eq!(
        published.headers()["access-control-allow-credentials"],
        "true"
    );
    assert!(
        published.headers().contains_key("vary"),
        "{:?}",
        published.headers()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_sends_each_stream_a_randomized_retry_and_closes_it() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &["--retry-ms", "3000"]).await;
    let mut streams = Vec::new();
    for member in ["1", "2", "3", "4"] {
        let mut stream = app.subscribe(member, "", &[]).await;
        stream.next(WAIT).await.unwrap();
        stream.next(WAIT).await.unwrap();
        streams.push(stream);
    }
    let started = Instant::now();
    app.shutdown.cancel();
    let mut retries = Vec::new();
    for stream in &mut streams {
        let frames = stream.until_closed(WAIT).await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        let retry = frames[0].retry.expect("a retry field");
        assert!((1_500..=6_000).contains(&retry), "retry {retry}");
        retries.push(retry);
    }
    retries.dedup();
    assert!(
        retries.len() > 1,
        "retries are spread, not identical: {retries:?}"
    );
    tokio::time::timeout(WAIT, app.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drained in {:?}",
        started.elapsed()
    );
}

#[test]
fn the_binary_drains_and_exits_zero_on_sigterm_and_refuses_bad_config_with_64() {
    let redis = RedisServer::start();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sse-notify"))
        .env_clear()
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", redis.url())
        .env("AUTH_MODE", "gateway")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    assert!(
        log.by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("live reader following redis"))
    );
    std::thread::spawn(move || log.for_each(drop));

    // A raw HTTP/1.1 subscription, read on its own thread.
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(
        &mut socket,
        b"GET /notification/subscribe?member_id=42 HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .unwrap();
    // The stream is open once `connected` has arrived; the rest is read on its own thread.
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut socket = BufReader::new(socket);
    let mut opened = String::new();
    while !opened.contains("event: connected") {
        let read = socket
            .read_line(&mut opened)
            .expect("the stream opens within 10 s");
        assert!(read > 0, "closed before connected: {opened}");
    }
    let reader = std::thread::spawn(move || {
        let mut received = opened;
        let _ = std::io::Read::read_to_string(&mut socket, &mut received);
        received
    });

    let started = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exited in {:?}",
        started.elapsed()
    );
    let received = reader.join().unwrap();
    assert!(received.contains("event: connected"), "{received}");
    let after_connected = &received[received.find("event: connected").unwrap()..];
    assert!(
        after_connected.contains("retry: "),
        "goodbye retry missing: {received}"
    );

    let bad = Command::new(env!("CARGO_BIN_EXE_sse-notify"))
        .env_clear()
        .env("AUTH_MODE", "jwt")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("JWT_SECRET"));
}

#[test]
fn every_refused_configuration_exits_64_the_migration_included() {
    let run = |env: &[(&str, &str)], args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sse-notify"))
            .env_clear()
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap()
    };
    for (env, args, says) in [
        // A value clap cannot parse, as a value out of range: both are refused configurations.
        (
            &[("AUTH_MODE", "magic")][..],
            &[][..],
            "possible values: jwt, gateway",
        ),
        (
            &[("AUTH_MODE", "gateway"), ("RETENTION_SECS", "soon")],
            &[],
            "RETENTION_SECS",
        ),
        // migrate-zset is checked like the service: 0 is refused, not turned into 1.
        (
            &[("RETENTION_SECS", "0")],
            &["migrate-zset", "--dry-run"],
            "RETENTION_SECS",
        ),
        (
            &[("MAX_PER_MEMBER", "0")],
            &["migrate-zset"],
            "MAX_PER_MEMBER",
        ),
        // tokio's own setting, which tokio would answer with a panic.
        (
            &[("AUTH_MODE", "gateway"), ("TOKIO_WORKER_THREADS", "0")],
            &[],
            "TOKIO_WORKER_THREADS",
        ),
        (
            &[("TOKIO_WORKER_THREADS", "two")],
            &["migrate-zset"],
            "TOKIO_WORKER_THREADS",
        ),
    ] {
        let output = run(env, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{env:?} {args:?}: {stderr}");
        assert!(stderr.contains(says), "{env:?} {args:?}: {stderr}");
    }
    let help = run(&[], &["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("REDIS_TLS_CA_FILE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_disconnected_instead_of_buffered() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    // Subscribe over a raw socket and never read: the kernel buffers fill, then our send buffer.
    let mut socket = app.connect().await;
    let request = format!(
        "GET /notification/subscribe HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n",
        token("slow")
    );
    tokio::io::AsyncWriteExt::write_all(&mut socket, request.as_bytes())
        .await
        .unwrap();
    eventually("the stream to open", || async {
        (app.metric("sse_notify_open_streams").await == 1.0).then_some(())
    })
    .await;
    let big = "x".repeat(60_000);
    let mut published = 0;
    loop {
        app.publish("slow", json!(big)).await;
        published += 1;
        if app.metric("sse_notify_slow_client_disconnects_total").await == 1.0 {
            break;
        }
        assert!(
            published < 2_000,
            "never disconnected after {published} large notifications"
        );
    }
    // A reading client of the same member is unaffected.
    let mut reader = app.subscribe("slow", "", &[]).await;
    reader.next(WAIT).await.unwrap();
    reader.next(WAIT).await.unwrap();
    let id = app.publish("slow", json!("small")).await;
    // Large ones still in dispatch when it registered may come first: in order, then ours.
    let mut previous = (0, 0);
    loop {
        let got = reader.next_notification(WAIT).await.id.unwrap();
        assert!(id_order(&got) > previous, "{got} after {previous:?}");
        if got == id {
            break;
        }
        previous = id_order(&got);
    }
    drop(socket);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_client_is_served_cacheable_and_readable_from_any_origin() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let url = format!("{}/client/sse-notify.js", app.url);
    let response = app
        .client
        .get(&url)
        .header("origin", "https://any.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert!(
        headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=")
    );
    assert_eq!(headers["access-control-allow-origin"], "*");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let body = response.text().await.unwrap();
    // The one copy: the package's build in clients/js/dist, as built in.
    assert_eq!(
        body,
        include_str!("../../clients/js/dist/sse-notify.js"),
        "served as clients/js/dist has it"
    );
    let again = app
        .client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag.as_str());
    app.stop().await;
}

/// Without `TOKIO_WORKER_THREADS`, a Redis on this machine (a loopback URL) gets a core of its own:
/// one worker fewer than cores (at least one); a Redis elsewhere, one per core. The setting wins.
#[test]
fn a_core_is_spared_for_a_redis_on_this_machine_unless_told_otherwise() {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let workers_at_start = |redis_url: &str, threads: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sse-notify"));
        command
            .env_clear()
            .env("AUTH_MODE", "gateway")
            .env("LISTEN_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped());
        if let Some(threads) = threads {
            command.env("TOKIO_WORKER_THREADS", threads);
        }
        let mut child = command.spawn().unwrap();
        // It says so as it starts listening, before it has reached Redis (none runs here). Read
        // on a thread of its own, so a binary that never says it fails the test instead of
        // hanging it.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let listening = BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .find(|line| line.contains(" listening "));
            let _ = tx.send(listening);
        });
        let listening = rx.recv_timeout(Duration::from_secs(10));
        let _ = child.kill();
        let _ = child.wait();
        let line = listening
            .expect("a `listening` line within 10 s")
            .expect("a `listening` line before the binary exited");
        line.split_whitespace()
            .find_map(|field| field.strip_prefix("workers="))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("the `listening` line names its workers: {line}"))
    };
    assert_eq!(
        workers_at_start("redis://127.0.0.1:1", None),
        cores.saturating_sub(1).max(1)
    );
    assert_eq!(workers_at_start("redis://redis.invalid:6379", None), cores);
    assert_eq!(workers_at_start("redis://127.0.0.1:1", Some("3")), 3);
}
