pub mod app;
pub mod browser;
pub mod cluster;
pub mod kafka;
pub mod nginx;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod sse;
pub mod tls;

pub use app::{TestApp, WAIT, token};
pub use redis::RedisServer;

/// One metric of the instance at `url` (a line `name value`), `None` when it has none yet.
pub async fn metric_at(client: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// A stream id as a sortable pair: `(ms, seq)`.
pub fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("a stream id");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

/// Polls `check` every 50 ms until it yields `Some`; panics naming `what` after 30 s.
pub async fn eventually<T, Fut: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
