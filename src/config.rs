//! Command line and environment (API.md, Process): the only reader of the environment.
//! `Args` is what clap parses; `Config` is the validated form the rest of the service uses.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::HeaderValue;
use clap::Parser;

/// Every setting is an environment variable and a `--kebab-case` flag; the flag wins.
#[derive(Debug, Clone, Parser)]
#[command(name = "sse-notify", version, about, args_override_self = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// HTTP listen address.
    #[arg(long, env, default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,
    /// Redis URL (standalone).
    #[arg(long, env, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
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
    /// `jwt` (member = `sub` of an HS256 token) or `gateway` (trust a `member_id` header).
    #[arg(long, env, default_value = "jwt")]
    pub auth_mode: String,
    /// HS256 secret; required in `jwt` mode.
    #[arg(long, env, hide_env_values = true)]
    pub jwt_secret: Option<String>,
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

    /// Constant-time comparison, so a wrong guess learns nothing from timing.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    Jwt { secret: Secret },
    Gateway,
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
    pub redis_url: String,
    pub retention: Duration,
    pub max_per_member: u64,
    pub heartbeat: Duration,
    pub retry: Duration,
    pub auth: Auth,
    pub publish_token: Option<Secret>,
    pub cors_origins: Vec<HeaderValue>,
    pub kafka: Option<Kafka>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("AUTH_MODE must be `jwt` or `gateway`, not {0:?}")]
    AuthMode(String),
    #[error("JWT_SECRET is required when AUTH_MODE=jwt")]
    MissingJwtSecret,
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("CORS_ORIGINS entry {0:?} is not a valid origin (e.g. https://app.example.com)")]
    CorsOrigin(String),
    #[error("REDIS_URL {0:?} is not a redis:// or rediss:// URL")]
    RedisUrl(String),
    #[error("KAFKA_TOPICS must name at least one topic")]
    NoKafkaTopics,
    #[error("KAFKA_OPTIONS entry {0:?} is not key=value")]
    KafkaOption(String),
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        let auth = match args.auth_mode.as_str() {
            "jwt" => match args.jwt_secret.filter(|s| !s.is_empty()) {
                Some(secret) => Auth::Jwt {
                    secret: Secret(secret),
                },
                None => return Err(ConfigError::MissingJwtSecret),
            },
            "gateway" => Auth::Gateway,
            other => return Err(ConfigError::AuthMode(other.to_owned())),
        };
        for (name, value) in [
            ("RETENTION_SECS", args.retention_secs),
            ("MAX_PER_MEMBER", args.max_per_member),
            ("HEARTBEAT_SECS", args.heartbeat_secs),
            ("RETRY_MS", args.retry_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if redis::parse_redis_url(&args.redis_url).is_none() {
            return Err(ConfigError::RedisUrl(args.redis_url));
        }
        let cors_origins = args
            .cors_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .map(|o| {
                let valid =
                    (o.starts_with("http://") || o.starts_with("https://")) && !o.ends_with('/');
                HeaderValue::from_str(o)
                    .ok()
                    .filter(|_| valid)
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
            redis_url: args.redis_url,
            retention: Duration::from_secs(args.retention_secs),
            max_per_member: args.max_per_member,
            heartbeat: Duration::from_secs(args.heartbeat_secs),
            retry: Duration::from_millis(args.retry_ms),
            auth,
            publish_token: args.publish_token.filter(|t| !t.is_empty()).map(Secret),
            cors_origins,
            kafka,
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
        assert!(matches!(
            parse(&["--auth-mode", "magic"]),
            Err(ConfigError::AuthMode(_))
        ));
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
        assert!(parse(&["--auth-mode", "gateway", "--retention-secs", "0"]).is_err());
        assert!(parse(&["--auth-mode", "gateway", "--redis-url", "localhost:6379"]).is_err());
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
