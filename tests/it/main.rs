//! Integration tests: real `redis-server`s on free loopback ports, real HTTP to real instances.

mod support;

mod auth;
mod chaos;
mod cluster;
mod compose;
mod connection;
mod exactness;
mod history;
mod hostile;
mod kafka;
mod migrate;
mod nginx;
mod ops;
mod publish;
mod read;
mod resilience;
mod retention;
mod subscribe;
mod tls;
