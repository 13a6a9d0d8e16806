//! An sse-notify instance inside the test process, on a free port, stopped through its token.

use std::time::Duration;

use clap::Parser as _;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sse_notify::config::{Args, Config};
use sse_notify::http::auth::sign_hs256;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::eventually;
use super::sse::SseStream;

pub const JWT_SECRET: &str = "test-jwt-secret";
pub const PUBLISH_TOKEN: &str = "test-publish-token";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub url: String,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
    pub client: reqwest::Client,
}

impl TestApp {
    /// Starts an instance in `jwt` mode on `redis_url`; `extra` flags override the defaults.
    pub async fn start(redis_url: &str, extra: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", redis_url, extra).await
    }

    pub async fn start_on(addr: &str, redis_url: &str, extra: &[&str]) -> Self {
        let app = Self::spawn_on(addr, redis_url, extra).await;
        app.wait_ready().await;
        app
    }

    /// Starts an instance without waiting for it to be ready.
    pub async fn spawn(redis_url: &str, extra: &[&str]) -> Self {
        Self::spawn_on("127.0.0.1:0", redis_url, extra).await
    }

    async fn spawn_on(addr: &str, redis_url: &str, extra: &[&str]) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the test listener");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let argv = [
            "sse-notify",
            "--redis-url",
            redis_url,
            "--auth-mode",
            "jwt",
            "--jwt-secret",
            JWT_SECRET,
            "--publish-token",
            PUBLISH_TOKEN,
        ]
        .into_iter()
        .chain(extra.iter().copied());
        let config = Config::try_from(Args::try_parse_from(argv).expect("test args parse"))
            .expect("test config is valid");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(sse_notify::app::run(config, listener, shutdown.clone()));
        Self {
            url,
            shutdown,
            handle,
            client: reqwest::Client::new(),
        }
    }

    /// Waits (bounded) until `/readyz` says ready.
    pub async fn wait_ready(&self) {
        let what = format!("{} to be ready", self.url);
        eventually(&what, || async { self.readyz().await.0.then_some(()) }).await;
    }

    /// Waits until `/readyz` reports Redis unreachable: the instance's own command connection
    /// has failed (not merely the test's view of Redis), so what it answers next is what an
    /// outage looks like, not a command lost on a dying connection.
    pub async fn wait_unready(&self) {
        let what = format!("{} to report redis unreachable", self.url);
        eventually(&what, || async {
            (self.readyz().await.1 == Some(false)).then_some(())
        })
        .await;
    }

    /// `/readyz`: whether it answered 200, and its `redis` field.
    async fn readyz(&self) -> (bool, Option<bool>) {
        let Ok(response) = self.client.get(format!("{}/readyz", self.url)).send().await else {
            return (false, None);
        };
        let ok = response.status().is_success();
        let body: Option<serde_json::Value> = response.json().await.ok();
        (ok, body.and_then(|b| b["redis"].as_bool()))
    }

    /// The value of one metric line (`name` with any suffix, e.g. `sse_notify_open_streams`),
    /// scraped through `client` (a fresh one to keep the pool's connection out of a count).
    pub async fn metric_through(&self, client: &reqwest::Client, name: &str) -> f64 {
        super::metric_at(client, &self.url, name)
            .await
            .unwrap_or_else(|| panic!("no metric {name} at {}", self.url))
    }

    pub async fn metric(&self, name: &str) -> f64 {
        self.metric_through(&self.client, name).await
    }

    /// `GET path` as `member` (a token in the header): the status and the JSON body (null when
    /// the body is not JSON).
    pub async fn get_json(&self, path: &str, member: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(token(member))
            .send()
            .await
            .expect("GET answered");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// A raw TCP connection to the instance, for requests written byte by byte.
    pub async fn connect(&self) -> tokio::net::TcpStream {
        tokio::net::TcpStream::connect(self.url.trim_start_matches("http://"))
            .await
            .expect("connect to the service")
    }

    /// Cancels the token and waits for `app::run` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("instance stops in time")
            .expect("task joined")
            .expect("run returned Ok");
    }

    pub async fn publish(&self, member: &str, content: Value) -> String {
        self.publisher().publish(member, content).await
    }

    /// A handle that publishes through this instance from another task.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            url: self.url.clone(),
            client: self.client.clone(),
        }
    }

    pub fn publisher_raw(&self) -> RawPublisher {
        RawPublisher {
            url: self.url.clone(),
            client: self.client.clone(),
        }
    }

    pub async fn publish_raw(&self, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/notifications", self.url))
            .bearer_auth(PUBLISH_TOKEN)
            .json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("publish request")
    }

    /// Opens a subscription for `member` with a bearer token and the given extra headers.
    pub async fn subscribe(
        &self,
        member: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> SseStream {
        let response = self
            .subscribe_response(
                &format!("/notification/subscribe{query}"),
                Some(&token(member)),
                headers,
            )
            .await;
        assert_eq!(response.status(), 200, "subscribe failed");
        SseStream::new(response)
    }

    pub async fn subscribe_response(
        &self,
        path_and_query: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path_and_query}", self.url));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                value.parse().expect("header value"),
            );
        }
        request
            .headers(map)
            .send()
            .await
            .expect("subscribe request")
    }
}

/// Publishes with an idempotency key and tells a refusal (503, or no answer) from an id.
#[derive(Clone)]
pub struct RawPublisher {
    url: String,
    client: reqwest::Client,
}

impl RawPublisher {
    /// Publishes `body` without an idempotency key: the status and the JSON answer.
    pub async fn post_json(&self, body: Value) -> (u16, Value) {
        post_json(
            &self.client,
            &format!("{}/notifications", self.url),
            PUBLISH_TOKEN,
            body,
        )
        .await
    }

    /// The first id on 200/201; `None` on 503, 504 or a failed request; panics on anything else.
    pub async fn post(&self, body: Value, idempotency_key: &str) -> Option<String> {
        let response = self
            .client
            .post(format!("{}/notifications", self.url))
            .bearer_auth(PUBLISH_TOKEN)
            .header("Idempotency-Key", idempotency_key)
            .json(&body)
            .send()
            .await
            .ok()?;
        match response.status().as_u16() {
            200 | 201 => {}
            // Nothing stored (503), or unknown (504): the caller retries with the same key.
            503 | 504 => return None,
            other => panic!("publish answered {other}"),
        }
        let body: Value = response.json().await.ok()?;
        body["ids"][0].as_str().map(str::to_owned)
    }
}

#[derive(Clone)]
pub struct Publisher {
    url: String,
    client: reqwest::Client,
}

impl Publisher {
    /// Publishes `content` to `member` and returns the new id.
    pub async fn publish(&self, member: &str, content: Value) -> String {
        let response = self
            .client
            .post(format!("{}/notifications", self.url))
            .bearer_auth(PUBLISH_TOKEN)
            .json(&json!({ "member_id": member, "type": "test", "content": content }))
            .send()
            .await
            .expect("publish request");
        assert_eq!(response.status(), 201, "publish failed");
        let body: Value = response.json().await.expect("publish answers JSON");
        body["ids"][0].as_str().expect("one id").to_owned()
    }
}

/// A member token valid for an hour.
/// `POST url` with a JSON `body` as `bearer`: the status and the JSON answer (null if none).
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    bearer: &str,
    body: Value,
) -> (u16, Value) {
    let response = client
        .post(url)
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .expect("a well-formed answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

pub fn token(member: &str) -> String {
    token_with(json!({ "sub": member, "exp": now_secs() + 3600 }))
}

pub fn token_with(claims: Value) -> String {
    sign_hs256(&claims, JWT_SECRET.as_bytes())
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
