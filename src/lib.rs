//! sse-notify: per-member notifications over Server-Sent Events, replayable from Redis Streams.
//!
//! How the modules fit (imports point down this list, never up):
//!
//! - [`app`] wires everything and orders the shutdown; [`config`] turns the environment into a
//!   checked [`config::Config`] (the only reader of it).
//! - [`http`] is the external contract (API.md): the router, the hand-written streaming path
//!   for subscribe connections (`http::server`), auth, SSE framing, publish, history, ops.
//! - [`ingest`] decodes Kafka records and stores them; [`migrate`] moves the old sorted-set
//!   layout into streams. Neither knows HTTP.
//! - [`live`] fans notifications out: a few blocking `XREAD` readers wake the streams that wait.
//! - [`recovery`] decides `recovered` and replay continuity, as pure functions.
//! - [`store`] is the only code that talks to Redis (keys, Lua scripts in `migrations-lua/`,
//!   standalone or cluster, TLS); [`model`] is the vocabulary every layer shares (ids, types,
//!   keys, positions, the notification JSON), with no I/O.
//! - [`metrics`] holds the handles modules record into; [`backoff`] the one retry schedule.

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
