//! Command line and environment (API.md, Process): the only reader of the environment.
//! `Args` is what clap parses; `Config` is the validated form the rest of the service uses.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::store::{MAX_PUBLISH_WAIT, PublishWait, RedisTarget, RedisTls, TargetError};

/// Ten years: `now − retention` stays a valid stream id, and the key expiry a valid `PEXPIRE`.
const MAX_RETENTION_SECS: u64 = 10 * 365 * 86_400;

/// Every setting is an environment variable and a `--kebab-case` flag; the flag wins.
#[derive(Debug, Clone, Parser)]
#[command(name = "sse-notify", version, about, args_override_self = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// HTTP listen address.
    #[arg(long, env, default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,
    /// Redis URL: `redis://host:port` (standalone) or `redis+cluster://host:port,host:port`.
    #[arg(long, env, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Redis Cluster seed nodes, `host:port` comma-separated; when set, overrides REDIS_URL.
    #[arg(long, env, value_delimiter = ',')]
    pub redis_cluster_nodes: Vec<String>,
    /// PEM certificate authorities a `rediss://` server's certificate must chain to, instead of
    /// the system's.
    #[arg(long, env)]
    pub redis_tls_ca_file: Option<PathBuf>,
    /// PEM certificate (chain) shown to a Redis that asks clients for one (mutual TLS).
    #[arg(long, env, requires = "redis_tls_key_file")]
    pub redis_tls_cert_file: Option<PathBuf>,
    /// PEM private key of `REDIS_TLS_CERT_FILE`.
    #[arg(long, env, requires = "redis_tls_cert_file")]
    pub redis_tls_key_file: Option<PathBuf>,
    /// A publish is acknowledged only once this many replicas hold it (Redis `WAIT`); 0 = as soon
    /// as the master does.
    #[arg(long, env, default_value_t = 0)]
    pub publish_wait_replicas: u32,
    /// How long a publish waits for those replicas before it answers 504 (stored, outcome
    /// unknown), in milliseconds; at most 18 000, so a publish is answered within 30 s.
    #[arg(long, env, default_value_t = 1_000)]
    pub publish_wait_timeout_ms: u64,
    /// How long notifications stay replayable, in seconds.
    #[arg(long, env, default_value_t = 86_400)]
    pub retention_secs: u64,
    /// Hard cap of entries kept per member stream.
    #[arg(long, env, default_value_t = 10_000)]
    pub max_per_member: u64,
    /// A `: heartbeat` comment is written on streams silent this long, in seconds.
    #[arg(long, env, default_value_t = 15)]
    pub heartbeat_secs: u64,
    /// The `retry:` sent first on every stream, in milliseconds.
    #[arg(long, env, default_value_t = 3_000)]
    pub retry_ms: u64,
    /// Open connections at most; beyond, new ones are closed at once. Default: the open-files
    /// limit less a reserve for Redis, Kafka and the process itself.
    #[arg(long, env)]
    pub max_connections: Option<u64>,
    /// Open event streams at most, kept below `MAX_CONNECTIONS` so that health checks and
    /// publishes always find room; beyond, a subscribe gets `retry:` only (the browser comes back
    /// later). Default: `MAX_CONNECTIONS` less 256.
    #[arg(long, env)]
    pub max_streams: Option<u64>,
    /// Open streams one member may have on this instance; a newer one closes the member's oldest
    /// (its tab reconnects and resumes). A member with many tabs never gets near the default.
    #[arg(long, env, default_value_t = 64)]
    pub max_streams_per_member: u64,
    /// `jwt` (member = `sub` of an HS256 token) or `gateway` (trust a `member_id` header).
    #[arg(long, env, value_enum, default_value_t = AuthMode::Jwt)]
    pub auth_mode: AuthMode,
    /// HS256 secret; required in `jwt` mode.
    #[arg(long, env, hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// When set, a token's `aud` (a string or a list) must contain it.
    #[arg(long, env)]
    pub jwt_audience: Option<String>,
    /// When set, a token's `iss` must equal it.
    #[arg(long, env)]
    pub jwt_issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(long, env, default_value_t = 0)]
    pub jwt_leeway_secs: u64,
    /// Bearer token that `POST /notifications` requires; unset refuses HTTP publishing.
    #[arg(long, env, hide_env_values = true)]
    pub publish_token: Option<String>,
    /// Comma-separated origins allowed to subscribe from a browser (credentials allowed).
    #[arg(long, env, value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Kafka bootstrap servers; unset turns Kafka ingestion off.
    #[arg(long, env)]
    pub kafka_brokers: Option<String>,
    /// Comma-separated topics to consume.
    #[arg(long, env, value_delimiter = ',', default_value = "notifications")]
    pub kafka_topics: Vec<String>,
    #[arg(long, env, default_value = "sse-notify")]
    pub kafka_group_id: String,
    /// Where undecodable records go, with the reason in a header.
    #[arg(long, env, default_value = "notifications.dlq")]
    pub kafka_dlq_topic: String,
    /// Extra librdkafka properties, `key=value`, comma-separated (e.g. `session.timeout.ms=6000`).
    #[arg(long, env, value_delimiter = ',')]
    pub kafka_options: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    Jwt,
    Gateway,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Move notifications from the old layout (one sorted set per member) into member streams.
    MigrateZset(MigrateArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// Report what would move; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only keys matching this SCAN pattern.
    #[arg(long = "match", default_value = "*")]
    pub pattern: String,
    /// Remove moved (and expired) entries from the old sorted sets.
    #[arg(long)]
    pub delete_source: bool,
    /// Keys per SCAN step and per pipelined round trip.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
}

/// A secret string: usable, comparable in constant time, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison, so a wrong guess learns nothing from timing (but the length).
    pub fn matches(&self, candidate: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How a subscriber proves who it is (API.md, Identity).
#[derive(Debug, Clone)]
pub enum Auth {
    Jwt { secret: Secret, policy: JwtPolicy },
    Gateway,
}

/// What a valid token must say besides its signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtPolicy {
    pub audience: Option<String>,
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Kafka ingestion settings (API.md, Kafka ingestion); absent when `KAFKA_BROKERS` is unset.
#[derive(Debug, Clone)]
pub struct Kafka {
    pub brokers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    pub dlq_topic: String,
    /// librdkafka properties set after ours, so an operator can override any of them.
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub storage: Storage,
    pub heartbeat: Duration,
    pub retry: Duration,
    pub auth: Auth,
    pub publish_token: Option<Secret>,
    /// Each `http(s)://host[:port]`, visible ASCII only (so it is a valid header value).
    pub cors_origins: Vec<String>,
    pub kafka: Option<Kafka>,
    pub limits: Limits,
}

/// How much of the machine one instance lets clients take (file descriptors above all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_streams: usize,
    pub max_streams_per_member: usize,
}

/// Descriptors kept for everything but client connections: Redis, Kafka, logs, the listener.
const RESERVED_FDS: u64 = 128;
/// Connections kept for everything but streams: health checks, metrics, publishes.
const RESERVED_CONNECTIONS: u64 = 256;

impl Limits {
    /// `MAX_CONNECTIONS` and `MAX_STREAMS` as given, else derived from the open-files limit.
    fn new(args: &Args) -> Result<Self, ConfigError> {
        let fd_limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1_024, |(soft, _)| soft);
        let max_connections = args
            .max_connections
            .unwrap_or_else(|| fd_limit.saturating_sub(RESERVED_FDS).clamp(64, 1_000_000));
        // More connections than descriptors: the process would run out of files, and then not
        // even /healthz could be accepted.
        let most = fd_limit.saturating_sub(RESERVED_FDS / 2).max(1);
        if !(1..=most).contains(&max_connections) {
            return Err(ConfigError::OutOfRange {
                name: "MAX_CONNECTIONS",
                value: max_connections,
                min: 1,
                max: most,
            });
        }
        let max_streams = args.max_streams.unwrap_or_else(|| {
            max_connections
                .saturating_sub(RESERVED_CONNECTIONS)
                .max(max_connections / 2)
        });
        if max_streams == 0 || max_streams > max_connections {
            return Err(ConfigError::OutOfRange {
                name: "MAX_STREAMS",
                value: max_streams,
                min: 1,
                max: max_connections,
            });
        }
        if !(1..=100_000).contains(&args.max_streams_per_member) {
            return Err(ConfigError::OutOfRange {
                name: "MAX_STREAMS_PER_MEMBER",
                value: args.max_streams_per_member,
                min: 1,
                max: 100_000,
            });
        }
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(Self {
            max_connections: size(max_connections),
            max_streams: size(max_streams),
            max_streams_per_member: size(args.max_streams_per_member),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("JWT_SECRET is required when AUTH_MODE=jwt")]
    MissingJwtSecret,
    #[error("{name} must be from {min} to {max}, not {value}")]
    OutOfRange {
        name: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("CORS_ORIGINS entry {0:?} is not a valid origin (e.g. https://app.example.com)")]
    CorsOrigin(String),
    #[error(transparent)]
    Redis(#[from] TargetError),
    #[error("KAFKA_TOPICS must name at least one topic")]
    NoKafkaTopics,
    #[error("KAFKA_OPTIONS entry {0:?} is not key=value")]
    KafkaOption(String),
}

/// Where and how notifications are kept: what the service and `migrate-zset` both need, checked
/// the same way for both.
#[derive(Debug, Clone)]
pub struct Storage {
    pub redis: RedisTarget,
    pub retention: Duration,
    pub max_per_member: u64,
    pub publish_wait: Option<PublishWait>,
}

impl Storage {
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        // Bounded here, so that no Redis command can be given a value it rejects halfway through a
        // script (a write that fails after the first one is not rolled back).
        within("RETENTION_SECS", args.retention_secs, 1, MAX_RETENTION_SECS)?;
        within("MAX_PER_MEMBER", args.max_per_member, 1, 1_000_000)?;
        within(
            "PUBLISH_WAIT_REPLICAS",
            u64::from(args.publish_wait_replicas),
            0,
            16,
        )?;
        within(
            "PUBLISH_WAIT_TIMEOUT_MS",
            args.publish_wait_timeout_ms,
            1,
            u64::try_from(MAX_PUBLISH_WAIT.as_millis()).unwrap_or(u64::MAX),
        )?;
        // `REDIS_CLUSTER_NODES` when set, else `REDIS_URL`; and the `REDIS_TLS_*` files.
        let identity = args
            .redis_tls_cert_file
            .as_deref()
            .zip(args.redis_tls_key_file.as_deref()); // clap requires both or neither
        let tls = RedisTls::load(args.redis_tls_ca_file.as_deref(), identity)?;
        Ok(Self {
            redis: RedisTarget::new(&args.redis_url, &args.redis_cluster_nodes, tls)?,
            retention: Duration::from_secs(args.retention_secs),
            max_per_member: args.max_per_member,
            publish_wait: (args.publish_wait_replicas > 0).then(|| PublishWait {
                replicas: args.publish_wait_replicas,
                timeout: Duration::from_millis(args.publish_wait_timeout_ms),
            }),
        })
    }
}

fn within(name: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            name,
            value,
            min,
            max,
        })
    }
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        let limits = Limits::new(&args)?;
        let storage = Storage::from_args(&args)?;
        let auth = match args.auth_mode {
            AuthMode::Jwt => match args.jwt_secret.filter(|s| !s.is_empty()) {
                Some(secret) => Auth::Jwt {
                    secret: Secret(secret),
                    policy: JwtPolicy {
                        audience: args.jwt_audience.filter(|a| !a.is_empty()),
                        issuer: args.jwt_issuer.filter(|i| !i.is_empty()),
                        leeway: Duration::from_secs(args.jwt_leeway_secs),
                    },
                },
                None => return Err(ConfigError::MissingJwtSecret),
            },
            AuthMode::Gateway => Auth::Gateway,
        };
        for (name, value, min, max) in [
            ("HEARTBEAT_SECS", args.heartbeat_secs, 1, 3_600),
            ("RETRY_MS", args.retry_ms, 1, 600_000),
            ("JWT_LEEWAY_SECS", args.jwt_leeway_secs, 0, 300),
        ] {
            within(name, value, min, max)?;
        }
        let cors_origins = args
            .cors_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .map(|o| {
                let valid = (o.starts_with("http://") || o.starts_with("https://"))
                    && !o.ends_with('/')
                    && o.bytes().all(|b| b.is_ascii_graphic());
                valid
                    .then(|| o.to_owned())
                    .ok_or_else(|| ConfigError::CorsOrigin(o.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        let kafka = match args.kafka_brokers.filter(|b| !b.trim().is_empty()) {
            None => None,
            Some(brokers) => Some(kafka(
                brokers,
                args.kafka_topics,
                args.kafka_group_id,
                args.kafka_dlq_topic,
                args.kafka_options,
            )?),
        };
        Ok(Self {
            listen_addr: args.listen_addr,
            storage,
            heartbeat: Duration::from_secs(args.heartbeat_secs),
            retry: Duration::from_millis(args.retry_ms),
            auth,
            publish_token: args.publish_token.filter(|t| !t.is_empty()).map(Secret),
            cors_origins,
            kafka,
            limits,
        })
    }
}

fn kafka(
    brokers: String,
    topics: Vec<String>,
    group_id: String,
    dlq_topic: String,
    options: Vec<String>,
) -> Result<Kafka, ConfigError> {
    let topics: Vec<String> = topics
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if topics.is_empty() {
        return Err(ConfigError::NoKafkaTopics);
    }
    let options = options
        .iter()
        .filter(|o| !o.trim().is_empty())
        .map(|o| match o.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_owned(), value.trim().to_owned()))
            }
            _ => Err(ConfigError::KafkaOption(o.clone())),
        })
        .collect::<Result<_, _>>()?;
    Ok(Kafka {
        brokers,
        topics,
        group_id,
        dlq_topic,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let argv = std::iter::once("sse-notify").chain(args.iter().copied());
        Config::try_from(Args::try_parse_from(argv).unwrap())
    }

    #[test]
    fn jwt_mode_requires_a_secret() {
        assert!(matches!(
            parse(&["--auth-mode", "jwt", "--jwt-secret", ""]),
            Err(ConfigError::MissingJwtSecret)
        ));
        assert!(parse(&["--auth-mode", "jwt", "--jwt-secret", "s"]).is_ok());
        assert!(parse(&["--auth-mode", "gateway"]).is_ok());
        let magic = Args::try_parse_from(["sse-notify", "--auth-mode", "magic"]).unwrap_err();
        assert!(
            magic
                .to_string()
                .contains("[possible values: jwt, gateway]"),
            "{magic}"
        );
    }

    #[test]
    fn origins_and_numbers_are_validated() {
        let config = parse(&[
            "--auth-mode",
            "gateway",
            "--cors-origins",
            "http://a.test, https://b.test",
        ])
        .unwrap();
        assert_eq!(config.cors_origins.len(), 2);
        assert!(parse(&["--auth-mode", "gateway", "--cors-origins", "a.test"]).is_err());
        for (flag, bad) in [
            ("--retention-secs", "0"),
            ("--retention-secs", "315360001"),
            ("--retention-secs", "18446744073709551615"),
            ("--max-per-member", "0"),
            ("--max-per-member", "1000001"),
            ("--heartbeat-secs", "0"),
            ("--retry-ms", "0"),
            ("--publish-wait-replicas", "17"),
            ("--publish-wait-timeout-ms", "0"),
        ] {
            let error = parse(&["--auth-mode", "gateway", flag, bad]).unwrap_err();
            assert!(
                matches!(error, ConfigError::OutOfRange { .. }),
                "{flag} {bad}: {error}"
            );
        }
        assert!(parse(&["--auth-mode", "gateway", "--retention-secs", "315360000"]).is_ok());
        assert!(parse(&["--auth-mode", "gateway", "--redis-url", "localhost:6379"]).is_err());
    }

    #[test]
    fn publish_wait_is_off_unless_replicas_are_asked_for() {
        let config = parse(&[
            "--auth-mode",
            "gateway",
            "--publish-wait-replicas",
            "1",
            "--publish-wait-timeout-ms",
            "250",
        ])
        .unwrap();
        assert_eq!(
            config.storage.publish_wait,
            Some(PublishWait {
                replicas: 1,
                timeout: Duration::from_millis(250)
            })
        );
        assert_eq!(
            parse(&["--auth-mode", "gateway"])
                .unwrap()
                .storage
                .publish_wait,
            None
        );
        // A wait the request's deadline could not honour is refused at start.
        let wait = |ms: &str| parse(&["--auth-mode", "gateway", "--publish-wait-timeout-ms", ms]);
        assert!(wait("18000").is_ok());
        assert!(wait("18001").is_err());
        assert!(wait("0").is_err());
    }

    #[test]
    fn redis_tls_flags_are_read_at_start() {
        let dir = std::env::temp_dir().join(format!("sse-notify-tls-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let flags = |extra: &[&str]| {
            let mut flags = vec!["--auth-mode", "gateway", "--redis-url", "rediss://r:6380"];
            flags.extend(extra);
            parse(&flags).map(|config| config.storage.redis)
        };
        let error = flags(&["--redis-tls-ca-file", not_pem.to_str().unwrap()]).unwrap_err();
        assert!(
            matches!(error, ConfigError::Redis(TargetError::TlsFile { .. })),
            "{error}"
        );
        // A certificate without its key (and the reverse) is a usage error, caught by clap.
        let args = Args::try_parse_from([
            "sse-notify",
            "--redis-tls-cert-file",
            not_pem.to_str().unwrap(),
        ]);
        assert!(args.is_err());
        assert_eq!(flags(&[]).unwrap().tls, RedisTls::default());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn kafka_is_off_without_brokers_and_validated_with_them() {
        assert!(parse(&["--auth-mode", "gateway"]).unwrap().kafka.is_none());
        let kafka = parse(&[
            "--auth-mode",
            "gateway",
            "--kafka-brokers",
            "k:9092",
            "--kafka-topics",
            "a, b",
            "--kafka-options",
            "session.timeout.ms=6000",
        ])
        .unwrap()
        .kafka
        .unwrap();
        assert_eq!(kafka.topics, ["a", "b"]);
        assert_eq!(kafka.dlq_topic, "notifications.dlq");
        assert_eq!(
            kafka.options,
            [("session.timeout.ms".to_owned(), "6000".to_owned())]
        );
        assert!(
            parse(&[
                "--auth-mode",
                "gateway",
                "--kafka-brokers",
                "k:9092",
                "--kafka-options",
                "oops"
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "--auth-mode",
                "gateway",
                "--kafka-brokers",
                "k:9092",
                "--kafka-topics",
                " "
            ])
            .is_err()
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let config = parse(&["--jwt-secret", "hunter2", "--publish-token", "tok"]).unwrap();
        let printed = format!("{config:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("tok\""),
            "{printed}"
        );
    }
}
