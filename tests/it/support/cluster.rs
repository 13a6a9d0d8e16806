//! A throwaway Redis Cluster: 3 masters and 3 replicas, each a `redis-server` on a free loopback
//! port (its cluster bus on port + 10000), joined with `redis-cli --cluster create`; killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    /// TLS only (clients, replication and the cluster bus), with this directory's certificates.
    tls: Option<PathBuf>,
}

struct Node {
    port: u16,
    process: Option<Child>,
}

/// A node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// Slot ranges it serves (masters only).
    pub slots: Vec<(u16, u16)>,
}

const NODES: usize = 6;

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_on(None)
    }

    /// Every connection TLS, with `pki`'s certificates (the nodes show the server one to each
    /// other).
    pub fn start_tls(pki: &super::tls::Pki) -> Self {
        Self::start_on(Some(pki.dir().to_owned()))
    }

    fn start_on(tls: Option<PathBuf>) -> Self {
        let dir = std::env::temp_dir().join(format!("sse-notify-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create the cluster directory");
        let mut nodes = Vec::with_capacity(NODES);
        while nodes.len() < NODES {
            let port = free_cluster_port();
            if let Some(process) = spawn(port, &dir, tls.as_deref()) {
                nodes.push(Node {
                    port,
                    process: Some(process),
                });
            }
        }
        let cluster = Self { nodes, dir, tls };
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = cluster
            .redis_cli()
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli is not installed (apt-get install redis-tools)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        cluster.wait_until_healthy(3);
        cluster
    }

    /// `redis+cluster://` with every master as a seed.
    pub fn url(&self) -> String {
        let masters: Vec<String> = self
            .nodes()
            .into_iter()
            .filter(|n| n.master && !n.failed)
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}+cluster://{}", masters.join(","))
    }

    /// `redis-cli`, with the client certificate when the cluster speaks TLS.
    fn redis_cli(&self) -> Command {
        let mut cli = Command::new("redis-cli");
        if let Some(pki) = &self.tls {
            cli.args(super::tls::cli_args(pki));
        }
        cli
    }

    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let output = self
            .redis_cli()
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.process.is_some())
            .expect("a live node")
            .port
    }

    /// The cluster's view, from a node that is still up.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.cli(self.live_port(), &["CLUSTER", "NODES"])
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let address = fields.get(1)?;
                let port = address
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let flags = fields.get(2)?;
                let slots = fields
                    .iter()
                    .skip(8)
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| match s.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => s.parse().ok().map(|n| (n, n)),
                    })
                    .collect();
                Some(NodeInfo {
                    id: (*fields.first()?).to_owned(),
                    port,
                    master: flags.contains("master"),
                    failed: flags.contains("fail"),
                    slots,
                })
            })
            .collect()
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot: u16 = self
            .cli(self.live_port(), &["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("a slot number");
        self.nodes()
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .expect("a master serves the slot")
            .port
    }

    /// Moves one slot, keys included, from the master serving it to the master on `to`, the way
    /// `redis-cli --cluster reshard` does: IMPORTING/MIGRATING, MIGRATE the keys, then SETSLOT NODE
    /// on every master.
    pub fn move_slot(&self, slot: u16, to: u16) {
        let nodes = self.nodes();
        let owner = |port: u16| nodes.iter().find(|n| n.port == port).expect("a node");
        let from = nodes
            .iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .expect("a master serves the slot");
        let (from_port, from_id, to_id) = (from.port, from.id.clone(), owner(to).id.clone());
        let slot_arg = slot.to_string();
        self.cli(
            to,
            &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id],
        );
        self.cli(
            from_port,
            &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id],
        );
        loop {
            let keys = self.cli(from_port, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            let answer = self.cli(from_port, &args);
            assert_eq!(answer, "OK", "MIGRATE failed");
        }
        for master in nodes.iter().filter(|n| n.master && !n.failed) {
            self.cli(
                master.port,
                &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id],
            );
        }
    }

    /// SIGKILLs a node (a crash: no goodbye to the cluster).
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        if let Some(mut process) = node.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Waits until the cluster serves every slot again with `masters` masters, each with its
    /// replicas in sync (so a test's next kill is survivable too).
    pub fn wait_until_healthy(&self, masters: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.nodes.iter().filter(|n| n.process.is_some()).all(|n| {
                self.cli(n.port, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            });
            let nodes = self.nodes();
            let serving = nodes
                .iter()
                .filter(|n| n.master && !n.failed && !n.slots.is_empty());
            let covered: u32 = serving
                .clone()
                .flat_map(|n| n.slots.iter().map(|&(a, b)| u32::from(b - a) + 1))
                .sum();
            // With every node up, each master must have its replica in sync.
            let all_up = self.nodes.iter().all(|n| n.process.is_some());
            let synced = !all_up
                || serving.clone().all(|n| {
                    self.cli(n.port, &["INFO", "replication"])
                        .lines()
                        .any(|l| l.starts_with("slave0:") && l.contains("state=online"))
                });
            if ok && covered == 16_384 && serving.count() == masters && synced {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster never became healthy: {nodes:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A port whose cluster bus port (+10000) is free too, below the 55535 Redis allows.
fn free_cluster_port() -> u16 {
    loop {
        let port = 20_000 + fastrand::u16(..30_000);
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

fn spawn(port: u16, dir: &std::path::Path, tls: Option<&std::path::Path>) -> Option<Child> {
    let mut command = Command::new("redis-server");
    match tls {
        None => command.args(["--port", &port.to_string()]),
        Some(pki) => command.args(super::tls::server_args(pki, port)).args([
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
        ]),
    };
    let process = command
        .args(["--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        // Fail over fast, and let any replica take over (a test kills masters on purpose).
        .args(["--cluster-node-timeout", "1000"])
        .args(["--cluster-replica-validity-factor", "0"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-server is not installed (apt-get install redis-server)");
    super::redis::ready(process)
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut process) = node.process.take() {
                let _ = process.kill();
                let _ = process.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
