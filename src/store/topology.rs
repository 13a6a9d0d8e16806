//! How the store reaches Redis: one standalone server, or a Redis Cluster.
//!
//! Commands go through one handle either way ([`Commands`]): a `ConnectionManager` (one
//! multiplexed connection that reconnects by itself) or a `ClusterConnection` (one multiplexed
//! connection per master; it routes each command by its key's slot and follows MOVED/ASK and
//! topology changes). Blocking reads get a dedicated connection to the server that holds the slot
//! they read ([`Redis::dedicated`]), found again after every failure, so a failover or a slot move
//! is followed by reconnecting.
//!
//! The standalone command connection speaks RESP3, so the manager hears at once when Redis drops
//! it (a restart) and reconnects before the next command, instead of failing that command. A
//! command refused at connect time provably never reached Redis and is sent once more; a command
//! that timed out replaces the connection (the manager keeps one that silently stopped answering,
//! e.g. behind a blackholed route, for as long as TCP takes to give up).

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, ProtocolVersion,
    RedisError, RedisFuture, RedisResult, Value,
};
use tokio::sync::OnceCell;

use super::target::{RedisServers, RedisTarget, RedisTls};
use super::{CONNECT_TIMEOUT, StoreError};

/// The connection(s) commands are sent on; a cheap clone.
#[derive(Clone)]
pub enum Commands {
    Single {
        conn: ConnectionManager,
        owner: Arc<Standalone>,
    },
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single { conn, owner } => Box::pin(async move {
                let mut result = conn.req_packed_command(cmd).await;
                if result
                    .as_ref()
                    .is_err_and(RedisError::is_connection_refusal)
                {
                    result = conn.req_packed_command(cmd).await; // never sent; reconnected since
                }
                owner.observe(&result);
                result
            }),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single { conn, owner } => Box::pin(async move {
                let mut result = conn.req_packed_commands(pipeline, offset, count).await;
                if result
                    .as_ref()
                    .is_err_and(RedisError::is_connection_refusal)
                {
                    result = conn.req_packed_commands(pipeline, offset, count).await;
                }
                owner.observe(&result);
                result
            }),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single { conn, .. } => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A standalone server's command connection, replaced when a command times out.
pub struct Standalone {
    client: Client,
    /// How long a command may go unanswered before it fails and the connection is replaced.
    response_timeout: Duration,
    current: RwLock<ConnectionManager>,
    /// When the connection was last replaced: at most once per response timeout, so a stall
    /// that times out many commands at once opens one new connection, not one per command.
    replaced_at: Mutex<Instant>,
}

impl Standalone {
    fn open(url: &str, tls: &RedisTls, response_timeout: Duration) -> Result<Self, StoreError> {
        let info = url.into_connection_info()?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = client(info.set_redis_settings(settings), tls)?;
        let current = RwLock::new(manager(&client, response_timeout)?);
        Ok(Self {
            client,
            response_timeout,
            current,
            replaced_at: Mutex::new(Instant::now()),
        })
    }

    fn commands(self: &Arc<Self>) -> Commands {
        let conn = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Commands::Single {
            conn,
            owner: self.clone(),
        }
    }

    fn observe<T>(&self, result: &RedisResult<T>) {
        if !result.as_ref().is_err_and(RedisError::is_timeout) {
            return;
        }
        let mut replaced_at = self
            .replaced_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if replaced_at.elapsed() < self.response_timeout {
            return;
        }
        match manager(&self.client, self.response_timeout) {
            Ok(fresh) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
                *replaced_at = Instant::now();
                tracing::warn!("redis stopped answering in time; opened a new command connection");
            }
            Err(error) => tracing::warn!(
                error = &error as &dyn std::error::Error,
                "could not replace the redis command connection"
            ),
        }
    }
}

/// A client for one server, with the target's certificates when it is reached over TLS.
fn client(info: ConnectionInfo, tls: &RedisTls) -> RedisResult<Client> {
    match tls.certificates() {
        Some(certificates) if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) => {
            Client::build_with_tls(info, certificates)
        }
        _ => Client::open(info),
    }
}

fn manager(client: &Client, response_timeout: Duration) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(std::time::Duration::from_secs(1));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per instance, behind the store's Arc"
)]
pub enum Redis {
    Standalone(Arc<Standalone>),
    Cluster {
        client: ClusterClient,
        /// The first seed node: its credentials and settings serve every node found later.
        seed: ConnectionInfo,
        tls: RedisTls,
        /// Connected on first use, so the service starts (and reports not ready) without Redis.
        commands: OnceCell<ClusterConnection>,
    },
}

impl Redis {
    /// The standalone server's address and settings (`None` for a cluster).
    pub fn standalone_info(&self) -> Option<&ConnectionInfo> {
        match self {
            Self::Standalone(standalone) => Some(standalone.client.get_connection_info()),
            Self::Cluster { .. } => None,
        }
    }

    /// Prepares the connections without connecting. A command that goes unanswered for
    /// `response_timeout` fails (outcome unknown).
    pub fn open(target: &RedisTarget, response_timeout: Duration) -> Result<Self, StoreError> {
        let tls = &target.tls;
        match &target.servers {
            RedisServers::Standalone(url) => Ok(Self::Standalone(Arc::new(Standalone::open(
                url,
                tls,
                response_timeout,
            )?))),
            RedisServers::Cluster(nodes) => {
                let seed = nodes
                    .first()
                    .ok_or(StoreError::Reply("no cluster node given"))?
                    .as_str()
                    .into_connection_info()?;
                let mut builder = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(response_timeout)
                    .retries(3);
                if let Some(certificates) = tls.certificates() {
                    builder = builder.certs(certificates);
                }
                Ok(Self::Cluster {
                    client: builder.build()?,
                    seed,
                    tls: tls.clone(),
                    commands: OnceCell::new(),
                })
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    pub async fn commands(&self) -> Result<Commands, StoreError> {
        match self {
            Self::Standalone(standalone) => Ok(standalone.commands()),
            Self::Cluster {
                client, commands, ..
            } => {
                let conn = commands
                    .get_or_try_init(|| client.get_async_connection())
                    .await?;
                Ok(Commands::Cluster(conn.clone()))
            }
        }
    }

    /// A client for the server that serves `slot` (the master, in a cluster, as of now), for
    /// connections of their own: blocking reads must not hold up anybody else's commands.
    pub async fn server_of(&self, slot: u16) -> Result<Client, StoreError> {
        match self {
            Self::Standalone(standalone) => Ok(standalone.client.clone()),
            Self::Cluster { seed, tls, .. } => {
                let (host, port) = self.master_of(slot).await?;
                Ok(client(at(seed, host, port)?, tls)?)
            }
        }
    }

    /// A client for each server holding keys: the standalone server, or each cluster master.
    pub async fn masters(&self) -> Result<Vec<Client>, StoreError> {
        match self {
            Self::Standalone(standalone) => Ok(vec![standalone.client.clone()]),
            Self::Cluster { seed, tls, .. } => {
                let mut masters = Vec::new();
                for range in self.slot_ranges().await? {
                    if !masters.contains(&(range.host.clone(), range.port)) {
                        masters.push((range.host, range.port));
                    }
                }
                masters
                    .into_iter()
                    .map(|(host, port)| Ok(client(at(seed, host, port)?, tls)?))
                    .collect()
            }
        }
    }

    async fn master_of(&self, slot: u16) -> Result<(String, u16), StoreError> {
        self.slot_ranges()
            .await?
            .into_iter()
            .find(|range| range.first <= slot && slot <= range.last)
            .map(|range| (range.host, range.port))
            .ok_or(StoreError::Reply("no cluster master serves the slot"))
    }

    /// `CLUSTER SLOTS`, asked of whichever node the cluster connection picks.
    async fn slot_ranges(&self) -> Result<Vec<SlotRange>, StoreError> {
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut self.commands().await?)
            .await?;
        let seed_host = match self {
            Self::Cluster { seed, .. } => match seed.addr() {
                ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
                _ => String::new(),
            },
            Self::Standalone(_) => String::new(),
        };
        slot_ranges(reply, &seed_host)
    }
}

struct SlotRange {
    first: u16,
    last: u16,
    host: String,
    port: u16,
}

/// Parses `CLUSTER SLOTS`: `[[first, last, [host, port, id, ...], replica...], ...]`. A master
/// that announces an empty host is reached at the seed's host, as Redis documents.
fn slot_ranges(reply: Value, seed_host: &str) -> Result<Vec<SlotRange>, StoreError> {
    let Value::Array(ranges) = reply else {
        return Err(StoreError::Reply("CLUSTER SLOTS is not an array"));
    };
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(range) = range else {
                return None;
            };
            let Value::Array(master) = range.get(2)? else {
                return None;
            };
            let host = text(master.first()?)?;
            Some(SlotRange {
                first: int(range.first()?)?,
                last: int(range.get(1)?)?,
                host: if host.is_empty() || host == "?" {
                    seed_host.to_owned()
                } else {
                    host
                },
                port: int(master.get(1)?)?,
            })
        })
        .collect::<Option<_>>()
        .ok_or(StoreError::Reply("CLUSTER SLOTS entry is malformed"))
}

/// The seed's settings (credentials, protocol, TLS) for another node.
fn at(seed: &ConnectionInfo, host: String, port: u16) -> Result<ConnectionInfo, StoreError> {
    let addr = match seed.addr() {
        ConnectionAddr::Tcp(..) => ConnectionAddr::Tcp(host, port),
        ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: None, // the target's certificates are added by `client`
        },
        _ => {
            return Err(StoreError::Reply("cluster nodes must be reached over TCP"));
        }
    };
    Ok(seed.clone().set_addr(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn cluster_slots_name_each_ranges_master() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(7000), bulk("id1")]),
                Value::Array(vec![bulk("10.0.0.4"), Value::Int(7003), bulk("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk(""), Value::Int(7001), bulk("id2")]),
            ]),
        ]);
        let ranges = slot_ranges(reply, "seed.host").unwrap();
        assert_eq!(ranges.len(), 2);
        assert_eq!((ranges[0].first, ranges[0].last), (0, 5460));
        assert_eq!(
            (ranges[0].host.as_str(), ranges[0].port),
            ("10.0.0.1", 7000)
        );
        assert_eq!(
            (ranges[1].host.as_str(), ranges[1].port),
            ("seed.host", 7001)
        );
        assert!(slot_ranges(Value::Int(1), "").is_err());
    }
}
