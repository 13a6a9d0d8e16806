//! A throwaway `redis-server`: its own free port, no persistence, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::thread;

pub struct RedisServer {
    process: Option<Child>,
    port: u16,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("ephemeral port").port()
}

impl RedisServer {
    pub fn start() -> Self {
        for _ in 0..5 {
            // A port free a moment ago may be taken before redis binds it.
            if let Some(process) = spawn(free_port()) {
                return process;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Stops and starts again, empty, on the same port (a restart without persistence).
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..50 {
            if let Some(server) = spawn(self.port) {
                *self = server;
                return;
            }
            thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Runs a command with `redis-cli` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is not installed (apt-get install redis-tools)");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

fn spawn(port: u16) -> Option<RedisServer> {
    let process = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-server is not installed (apt-get install redis-server)");
    ready(process).map(|process| RedisServer {
        process: Some(process),
        port,
    })
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
        self.stop();
    }
}
