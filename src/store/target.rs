//! Where notifications are stored and how to reach it: a standalone Redis or a cluster's seeds,
//! TLS material, the opt-in replica wait. Parsed and checked once at start-up, so a target that
//! cannot work is a clear error then, not a failure at the first command.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("REDIS_URL {0:?} is not a redis://, rediss:// or redis+cluster:// URL")]
    RedisUrl(String),
    #[error("Redis Cluster node {0:?} is not host:port or a redis:// URL")]
    ClusterNode(String),
    #[error("REDIS_URL {url:?} cannot be used: {reason}")]
    UnusableRedis { url: String, reason: String },
    #[error("{name} {path:?} cannot be used: {reason}")]
    TlsFile {
        name: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// Where notifications are stored, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub servers: RedisServers,
    pub tls: RedisTls,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisServers {
    /// One Redis server, by URL.
    Standalone(String),
    /// Redis Cluster seed nodes, each a `redis://` (or `rediss://`) URL; the rest of the cluster
    /// is discovered.
    Cluster(Vec<String>),
}

/// What a `rediss://` connection trusts and shows, read from PEM files at start-up. Empty: the
/// system's certificate authorities, no client certificate.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca: Option<Vec<u8>>,
    /// Certificate chain and private key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisTls {
    /// Reads the PEM files: certificate authorities, and a client certificate with its key.
    pub fn load(ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> Result<Self, TargetError> {
        let read = |name: &'static str, path: &Path| {
            std::fs::read(path).map_err(|error| TargetError::TlsFile {
                name,
                path: path.to_owned(),
                reason: error.to_string(),
            })
        };
        let ca = match ca {
            None => None,
            Some(path) => {
                let pem = read("REDIS_TLS_CA_FILE", path)?;
                let marker = b"-----BEGIN CERTIFICATE-----";
                if !pem.windows(marker.len()).any(|w| w == marker) {
                    return Err(TargetError::TlsFile {
                        name: "REDIS_TLS_CA_FILE",
                        path: path.to_owned(),
                        reason: "no PEM certificate in it".to_owned(),
                    });
                }
                Some(pem)
            }
        };
        let identity = match identity {
            None => None,
            Some((cert, key)) => Some((
                read("REDIS_TLS_CERT_FILE", cert)?,
                read("REDIS_TLS_KEY_FILE", key)?,
            )),
        };
        Ok(Self { ca, identity })
    }

    /// In the form the redis crate takes; `None` when nothing replaces its defaults.
    pub fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca.is_none() && self.identity.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .identity
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca.clone(),
        })
    }
}

impl fmt::Debug for RedisTls {
    /// Says what is set, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl RedisTarget {
    /// A standalone URL, or a cluster: `cluster_nodes` when given, else a `redis+cluster://`
    /// (or `rediss+cluster://`) URL listing seed nodes, `redis+cluster://[user:pass@]h1:p1,h2:p2`.
    pub fn new(url: &str, cluster_nodes: &[String], tls: RedisTls) -> Result<Self, TargetError> {
        let target = Self {
            servers: Self::parse(url, cluster_nodes)?,
            tls,
        };
        target.check_usable()?;
        Ok(target)
    }

    /// The server URLs: the standalone one, or the cluster's seeds.
    pub fn urls(&self) -> &[String] {
        match &self.servers {
            RedisServers::Standalone(url) => std::slice::from_ref(url),
            RedisServers::Cluster(nodes) => nodes.as_slice(),
        }
    }

    /// Whether every server is on this machine as far as its URL tells: a Unix socket, `localhost`
    /// or a loopback address. Such a Redis takes its CPU from the cores the instance runs on.
    pub fn on_this_host(&self) -> bool {
        self.urls().iter().all(|url| {
            let Ok(info) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) else {
                return false;
            };
            match info.addr() {
                redis::ConnectionAddr::Unix(_) => true,
                redis::ConnectionAddr::Tcp(host, _)
                | redis::ConnectionAddr::TcpTls { host, .. } => is_loopback(host),
                _ => false,
            }
        })
    }

    /// Whether a URL turns certificate verification off (`rediss://…/#insecure`).
    pub fn skips_verification(&self) -> bool {
        self.urls().iter().any(|url| url.ends_with("#insecure"))
    }

    /// Every URL is one this build can connect to, with the TLS files given (which need
    /// `rediss://`): a target that cannot work is a start-up error, not a failure at the first
    /// command.
    fn check_usable(&self) -> Result<(), TargetError> {
        for url in self.urls() {
            let unusable = |reason: String| TargetError::UnusableRedis {
                url: redacted(url),
                reason,
            };
            let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .map_err(|error| unusable(error.to_string()))?;
            let Some(certificates) = self.tls.certificates() else {
                continue;
            };
            if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
                return Err(unusable(
                    "REDIS_TLS_* files are set, but the URL is not rediss://".to_owned(),
                ));
            }
            redis::Client::build_with_tls(info, certificates)
                .map_err(|error| unusable(error.to_string()))?;
        }
        Ok(())
    }

    fn parse(url: &str, cluster_nodes: &[String]) -> Result<RedisServers, TargetError> {
        let cluster_nodes: Vec<&str> = cluster_nodes
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .collect();
        if !cluster_nodes.is_empty() {
            return cluster_nodes
                .into_iter()
                .map(|node| {
                    let url = if node.contains("://") {
                        node.to_owned()
                    } else {
                        format!("redis://{node}")
                    };
                    valid_node(url, node)
                })
                .collect::<Result<_, _>>()
                .map(RedisServers::Cluster);
        }
        let cluster = ["redis+cluster://", "rediss+cluster://"]
            .iter()
            .find_map(|prefix| url.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match cluster {
            None if redis::parse_redis_url(url).is_some() => {
                Ok(RedisServers::Standalone(url.to_owned()))
            }
            None => Err(TargetError::RedisUrl(redacted(url))),
            Some((prefix, rest)) => {
                let scheme = prefix.trim_end_matches("+cluster://");
                let (credentials, hosts) = match rest.rsplit_once('@') {
                    Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
                    None => (String::new(), rest),
                };
                let hosts = hosts.trim_end_matches('/');
                if hosts.is_empty() {
                    return Err(TargetError::RedisUrl(redacted(url)));
                }
                hosts
                    .split(',')
                    .map(|host| valid_node(format!("{scheme}://{credentials}{host}"), host))
                    .collect::<Result<_, _>>()
                    .map(RedisServers::Cluster)
            }
        }
    }
}

/// `localhost` (and its subdomains, RFC 6761) or a loopback address, bracketed or not.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let lower = host.to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn valid_node(url: String, given: &str) -> Result<String, TargetError> {
    match redis::parse_redis_url(&url) {
        Some(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => Ok(url),
        _ => Err(TargetError::ClusterNode(redacted(given))),
    }
}

/// A URL fit for an error message: its credentials (`user:password@`) replaced by `***@`.
fn redacted(url: &str) -> String {
    let start = url.find("://").map_or(0, |at| at + 3);
    match url[start..].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_owned(),
    }
}

impl fmt::Display for RedisTarget {
    /// Hosts only (URLs may carry a password), with `tls` for `rediss://`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = |url: &str| {
            redis::parse_redis_url(url).map_or_else(
                || "?".to_owned(),
                |u| {
                    let tls = if u.scheme() == "rediss" { " (tls)" } else { "" };
                    format!(
                        "{}:{}{tls}",
                        u.host_str().unwrap_or("?"),
                        u.port().unwrap_or(6379)
                    )
                },
            )
        };
        match &self.servers {
            RedisServers::Standalone(url) => f.write_str(&host(url)),
            RedisServers::Cluster(nodes) => {
                let hosts: Vec<String> = nodes.iter().map(|n| host(n)).collect();
                write!(f, "cluster {}", hosts.join(","))
            }
        }
    }
}

/// Opt-in durability: a publish is acknowledged once `replicas` replicas hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishWait {
    pub replicas: u32,
    pub timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_on_loopback_or_a_unix_socket_is_on_this_host() {
        let on_this_host = |url: &str, nodes: &[&str]| {
            let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
            RedisTarget::new(url, &nodes, RedisTls::default())
                .unwrap()
                .on_this_host()
        };
        assert!(on_this_host("redis://127.0.0.1:6379", &[]));
        assert!(on_this_host("redis://127.0.0.2:6379/0", &[]));
        assert!(on_this_host("redis://localhost", &[]));
        assert!(on_this_host("redis://LocalHost:6380", &[]));
        assert!(on_this_host("redis://[::1]:6379", &[]));
        assert!(on_this_host("redis+unix:///run/redis.sock", &[]));
        assert!(on_this_host("rediss://:secret@localhost:6380", &[]));
        assert!(!on_this_host("redis://redis:6379", &[]));
        assert!(!on_this_host("redis://10.0.0.5:6379", &[]));
        assert!(!on_this_host("redis://localhost.example.com", &[]));
        assert!(on_this_host(
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
            &[]
        ));
        assert!(!on_this_host(
            "redis+cluster://127.0.0.1:7000,10.0.0.5:7001",
            &[]
        ));
        assert!(!on_this_host(
            "redis://127.0.0.1",
            &["redis://127.0.0.1:7000", "redis://cache:7001"]
        ));
    }

    #[test]
    fn redis_cluster_comes_from_a_cluster_url_or_the_node_list() {
        let target = |url: &str, nodes: &[&str]| {
            let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
            RedisTarget::new(url, &nodes, RedisTls::default()).map(|t| t.servers)
        };
        assert_eq!(
            target("redis://r:6379", &[]).unwrap(),
            RedisServers::Standalone("redis://r:6379".into())
        );
        assert_eq!(
            target("redis+cluster://:pw@a:7000,b:7001/", &[]).unwrap(),
            RedisServers::Cluster(vec![
                "redis://:pw@a:7000".into(),
                "redis://:pw@b:7001".into()
            ])
        );
        assert_eq!(
            target("rediss+cluster://a:7000", &[]).unwrap(),
            RedisServers::Cluster(vec!["rediss://a:7000".into()])
        );
        assert_eq!(
            target("redis://ignored:1", &["a:7000", " redis://b:7001 ", ""]).unwrap(),
            RedisServers::Cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()])
        );
        assert!(target("redis+cluster://", &[]).is_err());
        assert!(target("redis+cluster://a:7000,,b:1", &[]).is_err());
        assert!(target("redis://r", &["a:notaport"]).is_err());
        let shown = RedisTarget::new(
            "redis+cluster://:secret@a:7000,b:7001",
            &[],
            RedisTls::default(),
        )
        .unwrap()
        .to_string();
        assert_eq!(shown, "cluster a:7000,b:7001");
    }

    #[test]
    fn a_redis_target_that_cannot_work_is_refused_without_its_password() {
        let tls = RedisTls {
            ca: Some(
                b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".to_vec(),
            ),
            identity: None,
        };
        // TLS files but a plain-text URL: the operator meant TLS, and would silently not get it.
        let error =
            RedisTarget::new("redis://user:hunter2@r.example:6380", &[], tls.clone()).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, TargetError::UnusableRedis { .. }) && message.contains("rediss://"),
            "{message}"
        );
        assert!(
            message.contains("r.example") && !message.contains("hunter2"),
            "{message}"
        );
        // A CA file that is not PEM.
        let error = RedisTarget::new("rediss://user:hunter2@r.example:6380", &[], tls).unwrap_err();
        assert!(
            matches!(error, TargetError::UnusableRedis { .. })
                && !error.to_string().contains("hunter2"),
            "{error}"
        );
        let tls = RedisTarget::new("rediss://r.example:6380", &[], RedisTls::default()).unwrap();
        assert!(!tls.skips_verification());
        let insecure = RedisTarget::new(
            "rediss://r.example:6380/#insecure",
            &[],
            RedisTls::default(),
        );
        assert!(insecure.unwrap().skips_verification());
        let error =
            RedisTarget::new("redis//user:secret@host:6379", &[], RedisTls::default()).unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
        assert_eq!(redacted("redis://a:b@h:1"), "redis://***@h:1");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn tls_files_are_read_once_and_a_missing_or_empty_one_is_named() {
        let dir = std::env::temp_dir().join(format!("sse-notify-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let error = RedisTls::load(Some(Path::new("/nonexistent/ca.pem")), None).unwrap_err();
        assert!(
            matches!(
                &error,
                TargetError::TlsFile {
                    name: "REDIS_TLS_CA_FILE",
                    ..
                }
            ),
            "{error}"
        );
        let error = RedisTls::load(Some(&not_pem), None).unwrap_err();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
        let error =
            RedisTls::load(None, Some((&not_pem, Path::new("/nonexistent/key")))).unwrap_err();
        assert!(
            matches!(
                &error,
                TargetError::TlsFile {
                    name: "REDIS_TLS_KEY_FILE",
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(RedisTls::load(None, None).unwrap(), RedisTls::default());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
