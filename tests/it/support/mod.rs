pub mod app;
pub mod kafka;
pub mod process;
pub mod redis;
pub mod sse;

pub use app::{TestApp, WAIT, token};
pub use redis::RedisServer;

/// A stream id as a sortable pair: `(ms, seq)`.
pub fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("a stream id");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}
