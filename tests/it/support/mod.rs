pub mod app;
pub mod redis;
pub mod sse;

pub use app::{TestApp, WAIT, token};
pub use redis::RedisServer;
