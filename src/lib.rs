//! sse-notify: per-member notifications over Server-Sent Events, replayable from Redis Streams.

pub mod app;
pub mod backoff;
pub mod config;
pub mod http;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod recovery;
pub mod store;
