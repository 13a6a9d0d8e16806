//! A throwaway `redis-server`: its own free port and directory, no persistence unless asked,
//! killed on drop.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub struct RedisServer {
    process: Option<Child>,
    port: u16,
    /// Extra `redis-server` arguments, kept for restarts.
    args: Vec<String>,
    /// Its working directory (RDB and AOF files), removed on drop.
    dir: PathBuf,
    /// Served over TLS only, with the certificates of this directory (`Pki`).
    tls: Option<PathBuf>,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("ephemeral port").port()
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra arguments after the defaults (later ones win), e.g. persistence:
    /// `["--appendonly", "yes", "--appendfsync", "always"]`.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_on(args, None)
    }

    /// TLS only (no plain-text port) with `pki`'s server certificate; clients must show a
    /// certificate of its authority when `--tls-auth-clients` is `yes` (the default).
    pub fn start_tls(pki: &super::tls::Pki, args: &[&str]) -> Self {
        Self::start_on(args, Some(pki.dir().to_owned()))
    }

    fn start_on(args: &[&str], tls: Option<PathBuf>) -> Self {
        let dir = std::env::temp_dir().join(format!("sse-notify-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create the redis directory");
        let mut server = Self {
            process: None,
            port: 0,
            args: args.iter().map(|a| a.to_string()).collect(),
            dir,
            tls,
        };
        for _ in 0..5 {
            // A port free a moment ago may be taken before redis binds it.
            server.port = free_port();
            if let Some(process) = server.spawn() {
                server.process = Some(process);
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: a crash; nothing is saved that was not on disk already.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// A clean `SHUTDOWN`: Redis saves what its persistence settings say, then exits.
    pub fn shutdown(&mut self) {
        let _ = self.cli(&["SHUTDOWN"]);
        if let Some(mut process) = self.process.take() {
            let _ = process.wait();
        }
    }

    /// Stops (SIGKILL) and starts again on the same port: empty without persistence.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Starts the stopped server again on its port, with its arguments and directory (so it loads
    /// whatever it persisted).
    pub fn start_again(&mut self) {
        assert!(self.process.is_none(), "redis-server is still running");
        for _ in 0..50 {
            if let Some(process) = self.spawn() {
                self.process = Some(process);
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Deletes what the stopped server persisted: it starts again empty.
    pub fn wipe(&self) {
        assert!(self.process.is_none(), "redis-server is still running");
        for entry in std::fs::read_dir(&self.dir).expect("the redis directory") {
            let path = entry.expect("a directory entry").path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }

    /// SIGSTOP / SIGCONT: Redis freezes (connections stay open, nothing is answered), then goes
    /// on where it stopped.
    pub fn freeze(&self, frozen: bool) {
        let pid = self
            .process
            .as_ref()
            .expect("redis-server is running")
            .id()
            .to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Runs a command with `redis-cli` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cli = Command::new("redis-cli");
        cli.args(["-p", &self.port.to_string()]);
        if let Some(pki) = &self.tls {
            cli.args(super::tls::cli_args(pki));
        }
        let output = cli
            .args(args)
            .output()
            .expect("redis-cli is not installed (apt-get install redis-tools)");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Makes this server a replica of `primary` and waits until it is in sync.
    pub fn replicate(&self, primary: &RedisServer) {
        self.replicate_through(primary.port);
    }

    /// Replicates whatever listens on `port` (a relay to the primary) and waits until in sync.
    pub fn replicate_through(&self, port: u16) {
        self.cli(&["REPLICAOF", "127.0.0.1", &port.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "replica not in sync within 10 s");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn(&self) -> Option<Child> {
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(pki) => command.args(super::tls::server_args(pki, self.port)),
        };
        let process = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-server is not installed (apt-get install redis-server)");
        ready(process)
    }
}

/// Waits until a `redis-server` child (stdout piped) is ready; `None` if it exited instead (its
/// port was taken).
pub fn ready(mut process: Child) -> Option<Child> {
    let mut log = BufReader::new(process.stdout.take().expect("stdout is piped")).lines();
    // Ready when *our* child says so; if the port was taken it exits and `any` hits EOF.
    if log
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("Ready to accept connections"))
    {
        thread::spawn(move || log.for_each(drop)); // keep draining: a full pipe blocks redis
        return Some(process);
    }
    let _ = process.wait();
    None
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop(); // SIGKILL also ends a frozen server
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
