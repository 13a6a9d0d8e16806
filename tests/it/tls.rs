//! TLS to Redis (`rediss://`), as managed Redis offerings require it: a real `redis-server`
//! serving TLS only, with a throw-away certificate authority and an ACL user.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use sse_notify::model::MemberId;
use sse_notify::store::keys;

use crate::support::cluster::RedisCluster;
use crate::support::tls::Pki;
use crate::support::{RedisServer, TestApp, WAIT};

/// A TLS-only Redis that asks clients for a certificate and knows only `alice` (the default
/// user is off, so a connection that did not authenticate can do nothing).
fn tls_redis(pki: &Pki) -> RedisServer {
    RedisServer::start_tls(
        pki,
        &[
            "--user", "default", "off", "--user", "alice", "on", ">s3cret", "~*", "&*", "+@all",
        ],
    )
}

fn alice(redis: &RedisServer) -> String {
    redis.url().replace("rediss://", "rediss://alice:s3cret@")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_and_resume_over_mutual_tls_with_an_acl_user() {
    let pki = Pki::new();
    let redis = tls_redis(&pki);
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("client.pem"),
        pki.arg("client.key"),
    );
    let flags = pki.service_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = TestApp::start(&alice(&redis), &flags).await;
    let mut stream = app.subscribe("t1", "", &[]).await;
    stream.next(WAIT).await.unwrap(); // retry
    stream.next(WAIT).await.unwrap(); // connected
    let first = app.publish("t1", json!("over tls")).await;
    // Live delivery: the dedicated blocking-read connection is TLS too.
    assert_eq!(
        stream.next_notification(WAIT).await.id.as_deref(),
        Some(first.as_str())
    );
    let second = app.publish("t1", json!("while away")).await;
    // Resume: the replay script runs over TLS as well.
    let mut resumed = app
        .subscribe("t1", "", &[("Last-Event-ID", first.as_str())])
        .await;
    resumed.next(WAIT).await.unwrap();
    assert_eq!(resumed.next(WAIT).await.unwrap().json()["recovered"], true);
    assert_eq!(
        resumed.next_notification(WAIT).await.id.as_deref(),
        Some(second.as_str())
    );
    app.stop().await;

    // The one-off migration reaches the same server the same way.
    let migrate = std::process::Command::new(env!("CARGO_BIN_EXE_sse-notify"))
        .env_clear()
        .env("REDIS_URL", alice(&redis))
        .env("REDIS_TLS_CA_FILE", &ca)
        .env("REDIS_TLS_CERT_FILE", &cert)
        .env("REDIS_TLS_KEY_FILE", &key)
        .args(["migrate-zset", "--dry-run"])
        .output()
        .expect("the binary runs");
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_certificate_is_not_trusted_is_never_talked_to() {
    let pki = Pki::new();
    let redis = tls_redis(&pki);
    let (cert, key) = (pki.arg("client.pem"), pki.arg("client.key"));
    let identity = [
        "--redis-tls-cert-file",
        cert.as_str(),
        "--redis-tls-key-file",
        key.as_str(),
    ];
    // Another authority, and the system's (neither signed the server's certificate).
    let other = pki.arg("other-ca.pem");
    let mut with_other_ca = vec!["--redis-tls-ca-file", other.as_str()];
    with_other_ca.extend(identity);
    for flags in [with_other_ca, identity.to_vec()] {
        let app = TestApp::spawn(&alice(&redis), &flags).await;
        app.wait_unready().await;
        let response = app
            .publish_raw(json!({"member_id": "t2", "content": 1}), &[])
            .await;
        assert_eq!(response.status(), 503, "{flags:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "store_unavailable", "{flags:?}");
        app.stop().await;
    }
    // `#insecure` is the operator's explicit choice to skip verification (self-signed managed
    // Redis): it connects, with the client certificate still shown.
    let insecure = format!("{}/#insecure", alice(&redis));
    let app = TestApp::start(&insecure, &identity).await;
    app.publish("t2", json!("unverified but encrypted")).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_requires_a_client_certificate_refuses_a_client_without_one() {
    let pki = Pki::new();
    let redis = tls_redis(&pki);
    let ca = pki.arg("ca.pem");
    let app = TestApp::spawn(&alice(&redis), &["--redis-tls-ca-file", ca.as_str()]).await;
    app.wait_unready().await;
    let response = app
        .publish_raw(json!({"member_id": "t3", "content": 1}), &[])
        .await;
    assert_eq!(response.status(), 503);
    app.stop().await;
    // Without client-certificate checks, the CA alone is enough.
    let open = RedisServer::start_tls(&pki, &["--tls-auth-clients", "no"]);
    let app = TestApp::start(&open.url(), &["--redis-tls-ca-file", ca.as_str()]).await;
    app.publish("t3", json!("server-verified")).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_delivers_live_and_replays_on_every_master() {
    let pki = Pki::new();
    let cluster = RedisCluster::start_tls(&pki);
    let flags = pki.service_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    assert!(cluster.url().starts_with("rediss+cluster://"));
    let app = TestApp::start(&cluster.url(), &flags).await;
    // Members on every master: each master's blocking reader is a TLS connection of its own,
    // to a node found through CLUSTER SLOTS.
    let members: Vec<String> = (0..24).map(|i| format!("c{i}")).collect();
    let masters: BTreeSet<u16> = members
        .iter()
        .map(|m| cluster.master_of(&keys::stream(&m.parse::<MemberId>().unwrap())))
        .collect();
    assert_eq!(masters.len(), 3, "the members must span every master");
    let mut streams = Vec::new();
    for member in &members {
        let mut stream = app.subscribe(member, "", &[]).await;
        while stream.next(WAIT).await.unwrap().event.as_deref() != Some("connected") {}
        streams.push(stream);
    }
    let response = app
        .publish_raw(json!({"member_ids": members, "content": "tls"}), &[])
        .await;
    assert_eq!(response.status(), 201);
    let ids: Vec<String> = response.json::<serde_json::Value>().await.unwrap()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    for (stream, id) in streams.iter_mut().zip(&ids) {
        assert_eq!(stream.next_notification(WAIT).await.id.as_ref(), Some(id));
    }
    let later = app.publish(&members[7], json!("later")).await;
    let mut resumed = app
        .subscribe(&members[7], "", &[("Last-Event-ID", ids[7].as_str())])
        .await;
    let mut connected = resumed.next(WAIT).await.unwrap();
    while connected.event.as_deref() != Some("connected") {
        connected = resumed.next(WAIT).await.unwrap();
    }
    assert_eq!(connected.json()["recovered"], true);
    assert_eq!(resumed.next_notification(WAIT).await.id, Some(later));
    app.stop().await;
}

/// Over TLS a publish goes through the redis crate, not the group commit's own connections, and
/// a command there fails after 2 s. A publish that waits (`PUBLISH_WAIT_REPLICAS`) for a replica
/// that takes longer than that is still answered 201 once the replica holds it: publishes that
/// wait have connections whose response timeout covers `WAIT`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_publish_waits_for_a_replica_longer_than_a_command_may_take() {
    let pki = Pki::new();
    let replication = [
        "--tls-replication",
        "yes",
        "--tls-client-cert-file",
        &pki.arg("client.pem"),
        "--tls-client-key-file",
        &pki.arg("client.key"),
    ];
    let primary = RedisServer::start_tls(&pki, &replication);
    let replica = RedisServer::start_tls(&pki, &replication);
    replica.replicate(&primary);
    let mut flags = pki.service_flags();
    flags.extend(
        [
            "--publish-wait-replicas",
            "1",
            "--publish-wait-timeout-ms",
            "8000",
        ]
        .map(String::from),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = TestApp::start(&primary.url(), &flags).await;
    app.publish("slow", json!("confirmed at once")).await;

    replica.freeze(true);
    let ((response, took), ()) = tokio::join!(
        async {
            let started = Instant::now();
            let body = json!({ "member_id": "slow", "content": "confirmed late" });
            let response = app.publish_raw(body, &[]).await;
            (response, started.elapsed())
        },
        async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            replica.freeze(false);
        }
    );
    assert!(
        took > Duration::from_millis(2500),
        "the publish waited for the frozen replica (took {took:?})"
    );
    assert_eq!(
        response.status(),
        201,
        "confirmed once the replica came back"
    );
    let stream = primary.cli(&["--scan", "--pattern", "n:*:s:slow"]);
    assert_eq!(
        replica.cli(&["XLEN", &stream]),
        "2",
        "the replica holds both"
    );
    // The command connection was not taken for a stalled one: reads go on.
    let (status, page) = app.get_json("/notifications", "slow").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["notifications"].as_array().map(Vec::len),
        Some(2),
        "{page}"
    );
    app.stop().await;
}
