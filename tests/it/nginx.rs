//! The shipped nginx config (`deploy/nginx/sse-notify.conf`) on Debian's nginx, in front of two
//! real instances (child processes): HTTP/2 over TLS to the browsers, a rolling deploy (SIGTERM
//! one, bring it back, SIGTERM the other) and a crash (SIGKILL), with 200 browsers that must
//! never see a non-200 (a native EventSource gives up for good on one) and must get every
//! notification exactly once, in order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::{JWT_SECRET, PUBLISH_TOKEN};
use crate::support::nginx::Nginx;
use crate::support::process::ServiceProcess;
use crate::support::redis::free_port;
use crate::support::sse::SseStream;
use crate::support::tls::Pki;
use crate::support::{RedisServer, WAIT, eventually, metric_at, token};

const BROWSERS: usize = 200;

/// What one browser saw: the ids it received, and every answer that was not a 200 stream.
#[derive(Default)]
struct Seen {
    ids: Vec<String>,
    refused: Vec<String>,
    connects: usize,
}

/// A browser's EventSource: reconnects after `retry:` with `Last-Event-ID`, as browsers do, and
/// stops for good on a non-200 (recorded). Half use the trailing-slash URL, half the header
/// token instead of the query one.
async fn browser(base: String, pki_ca: reqwest::Client, n: usize, seen: Arc<Mutex<Seen>>) {
    let member = format!("b{n}");
    let path = if n.is_multiple_of(2) {
        "/notification/subscribe"
    } else {
        "/notification/subscribe/"
    };
    let jwt = token(&member);
    let mut retry = Duration::from_millis(500);
    loop {
        let last = lock(&seen).ids.last().cloned();
        let mut request = if n % 4 < 2 {
            pki_ca.get(format!("{base}{path}?access_token={jwt}"))
        } else {
            pki_ca.get(format!("{base}{path}")).bearer_auth(&jwt)
        };
        if let Some(last) = &last {
            request = request.header("Last-Event-ID", last);
        }
        match request.send().await {
            Ok(response) if response.status() == 200 => {
                assert_eq!(response.version(), reqwest::Version::HTTP_2);
                lock(&seen).connects += 1;
                let mut stream = SseStream::new(response);
                while let Some(frame) = stream.next(Duration::from_secs(60)).await {
                    if let Some(ms) = frame.retry {
                        retry = Duration::from_millis(ms);
                    }
                    match frame.event.as_deref() {
                        Some("connected") => {
                            let recovered = frame.json()["recovered"].clone();
                            if recovered != json!(true) {
                                lock(&seen).refused.push(format!("recovered {recovered}"));
                            }
                        }
                        Some("notification") => {
                            let id = frame.id.expect("a notification id");
                            lock(&seen).ids.push(id);
                        }
                        _ => {}
                    }
                }
            }
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                lock(&seen).refused.push(format!("{status} {body}"));
                return; // a native EventSource closes for good
            }
            Err(_) => {} // a network error: EventSource retries
        }
        tokio::time::sleep(retry).await;
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock()
        .expect("a browser task panicked holding its record")
}

fn instance_env(redis: &RedisServer) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", redis.url()),
        ("AUTH_MODE", "jwt".into()),
        ("JWT_SECRET", JWT_SECRET.into()),
        ("PUBLISH_TOKEN", PUBLISH_TOKEN.into()),
        ("RETRY_MS", "500".into()),
    ]
}

async fn start_instance(port: u16, env: &[(&'static str, String)]) -> ServiceProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServiceProcess::start_on(port, &env).await
}

/// One publish to every browser's member through the proxy; its ids, in member order.
async fn publish_all(client: &reqwest::Client, base: &str, round: usize) -> Vec<String> {
    let members: Vec<String> = (0..BROWSERS).map(|n| format!("b{n}")).collect();
    let response = client
        .post(format!("{base}/notifications"))
        .bearer_auth(PUBLISH_TOKEN)
        .header("Idempotency-Key", format!("round-{round}"))
        .json(&json!({ "member_ids": members, "content": { "round": round } }))
        .send()
        .await
        .expect("publish through nginx");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    assert_eq!(
        status, 201,
        "publish of round {round} through nginx: {body}"
    );
    body["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_str().expect("an id").to_owned())
        .collect()
}

/// Publishes round `round` and waits until every browser has it (or gave up: reported later).
async fn deliver(
    publisher: &reqwest::Client,
    base: &str,
    seen: &[Arc<Mutex<Seen>>],
    round: usize,
) -> Vec<String> {
    let ids = publish_all(publisher, base, round).await;
    eventually(&format!("round {round} delivered"), || async {
        seen.iter()
            .all(|s| {
                let s = lock(s);
                s.ids.len() >= round || !s.refused.is_empty()
            })
            .then_some(())
    })
    .await;
    ids
}

async fn open_streams(url: &str) -> f64 {
    metric_at(&reqwest::Client::new(), url, "sse_notify_open_streams")
        .await
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_nginx_config_carries_every_stream_through_a_rolling_deploy_and_a_crash() {
    let pki = Pki::new();
    let redis = RedisServer::start();
    let env = instance_env(&redis);
    let ports = [free_port(), free_port()];
    let a = start_instance(ports[0], &env).await;
    let b = start_instance(ports[1], &env).await;
    let nginx = Nginx::start(&pki, ports);
    let base = nginx.url();

    let seen: Vec<Arc<Mutex<Seen>>> = (0..BROWSERS).map(|_| Arc::default()).collect();
    for (n, seen) in seen.iter().enumerate() {
        tokio::spawn(browser(base.clone(), Nginx::browser(&pki), n, seen.clone()));
    }
    let all_connected = || async { seen.iter().all(|s| lock(s).connects > 0).then_some(()) };
    eventually("every browser connected through nginx", all_connected).await;
    let (on_a, on_b) = (open_streams(&a.url).await, open_streams(&b.url).await);
    assert!(
        on_a > 0.0 && on_b > 0.0,
        "least_conn spreads streams: {on_a} / {on_b}"
    );

    let publisher = Nginx::browser(&pki);
    let round = |n: usize| deliver(&publisher, &base, &seen, n);
    let mut published = vec![round(1).await];
    // Rolling deploy: A drains (SIGTERM) while B serves...
    assert!(a.terminate().await.success());
    published.push(round(2).await);
    // ...A comes back on its port, then B drains...
    let a = start_instance(ports[0], &env).await;
    assert!(b.terminate().await.success());
    published.push(round(3).await);
    // ...B comes back, and A crashes.
    let b = start_instance(ports[1], &env).await;
    a.kill();
    published.push(round(4).await);

    for (n, seen) in seen.iter().enumerate() {
        let seen = lock(seen);
        assert!(
            seen.refused.is_empty(),
            "browser {n}: {:?}; nginx error log:\n{}",
            seen.refused,
            nginx.error_log()
        );
        let expected: Vec<&String> = published.iter().map(|round| &round[n]).collect();
        let got: Vec<&String> = seen.ids.iter().collect();
        assert_eq!(
            got, expected,
            "browser {n}: every notification once, in order"
        );
    }

    // The access log has every stream's request line, and no token.
    let log = nginx.access_log();
    assert!(log.contains("access_token=[redacted]"), "{log}");
    let jwt = token("b0");
    let signature = jwt.rsplit('.').next().expect("a JWT");
    assert!(!log.contains(signature), "a token reached the access log");
    assert!(!log.contains(" 502 "), "nginx answered 502: {log}");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_on_the_trailing_slash_url_outlives_the_short_request_timeout() {
    let pki = Pki::new();
    let redis = RedisServer::start();
    let mut env = instance_env(&redis);
    env.push(("HEARTBEAT_SECS", "12".into())); // past `location /`'s 10 s read timeout
    let ports = [free_port(), free_port()];
    let _a = start_instance(ports[0], &env).await;
    let _b = start_instance(ports[1], &env).await;
    let nginx = Nginx::start(&pki, ports);
    let client = Nginx::browser(&pki);
    let response = client
        .get(format!("{}/notification/subscribe/", nginx.url()))
        .bearer_auth(token("quiet"))
        .send()
        .await
        .expect("subscribe through nginx");
    assert_eq!(response.status(), 200);
    let mut stream = SseStream::new(response);
    let heartbeat = loop {
        let frame = stream
            .next(Duration::from_secs(20))
            .await
            .expect("the stream was cut before its first heartbeat");
        if frame.comment.is_some() {
            break frame;
        }
    };
    assert_eq!(heartbeat.comment.as_deref(), Some("heartbeat"));
    let id = publish_one(&client, &nginx.url(), "quiet").await;
    assert_eq!(stream.next_notification(WAIT).await.id, Some(id));
}

async fn publish_one(client: &reqwest::Client, base: &str, member: &str) -> String {
    let response = client
        .post(format!("{base}/notifications"))
        .bearer_auth(PUBLISH_TOKEN)
        .json(&json!({ "member_id": member, "content": "after the silence" }))
        .send()
        .await
        .expect("publish through nginx");
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("JSON");
    body["ids"][0].as_str().expect("an id").to_owned()
}
