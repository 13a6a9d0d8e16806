//! A TCP relay between an instance and Redis that faults on command: latency, a stall, a
//! blackhole, a cut, or a silent failover to another server. A lagging instance, a half-dead
//! connection or a failover then become ordinary tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the relay does to the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes pass at once.
    None,
    /// Every byte arrives this much later, in both directions (order and throughput kept).
    Delay(Duration),
    /// Nothing moves (bytes wait in the relay and the kernel) until the fault changes: Redis
    /// looks frozen, then catches up.
    Stall,
    /// Bytes are read and dropped, in both directions, on every connection open now and later:
    /// the route died without a reset.
    Blackhole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    fault: Fault,
    upstream: u16,
    /// The generation new connections get; bumped by every cut or blackhole.
    generation: u64,
    /// Connections of an older generation close.
    cut_before: u64,
    /// Connections of an older generation close unless they carry a blocking `XREAD` (a live
    /// reader's): the command connection moves, the reader stays where it was.
    cut_commands_before: u64,
    /// Connections of an older generation drop every byte (blackholed while open); newer pass.
    blackholed_before: u64,
}

pub struct Relay {
    port: u16,
    state: watch::Sender<State>,
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    /// Relays a free loopback port to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let (state, _) = watch::channel(State {
            fault: Fault::None,
            upstream,
            generation: 0,
            cut_before: 0,
            cut_commands_before: 0,
            blackholed_before: 0,
        });
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn(accept(listener, state.clone(), connections.clone()));
        Self {
            port,
            state,
            accept,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set_fault(&self, fault: Fault) {
        self.state.send_modify(|s| s.fault = fault);
    }

    /// Connections open now drop every byte from here on (a route that died silently); new
    /// connections pass.
    pub fn blackhole_open_connections(&self) {
        self.state.send_modify(|s| {
            s.generation += 1;
            s.blackholed_before = s.generation;
        });
    }

    /// Closes every relayed connection now, as a crashed server's host would.
    pub fn cut(&self) {
        self.state.send_modify(|s| {
            s.generation += 1;
            s.cut_before = s.generation;
        });
    }

    /// Closes every open connection but the live readers' (those that sent an `XREAD`).
    pub fn cut_commands(&self) {
        self.state.send_modify(|s| {
            s.generation += 1;
            s.cut_commands_before = s.generation;
        });
    }

    /// New connections reach `upstream`; open ones stay where they are.
    pub fn redirect(&self, upstream: u16) {
        self.state.send_modify(|s| s.upstream = upstream);
    }

    /// A silent failover: connections open now are cut, new ones reach `upstream`.
    pub fn switch_to(&self, upstream: u16) {
        self.state.send_modify(|s| {
            s.upstream = upstream;
            s.generation += 1;
            s.cut_before = s.generation;
        });
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.connections.lock().expect("relay tasks").drain(..) {
            task.abort();
        }
    }
}

async fn accept(
    listener: TcpListener,
    state: watch::Sender<State>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    while let Ok((client, _)) = listener.accept().await {
        let _ = client.set_nodelay(true);
        let task = tokio::spawn(relay(client, state.subscribe()));
        let mut tasks = connections.lock().expect("relay tasks");
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

/// One relayed connection: ends when either side closes or its generation is cut.
async fn relay(client: TcpStream, mut state: watch::Receiver<State>) {
    let start = *state.borrow_and_update();
    if start.fault == Fault::Stall {
        // A frozen server does not accept either: wait for the stall to end.
        let _ = state.wait_for(|s| s.fault != Fault::Stall).await;
    }
    let upstream = state.borrow().upstream;
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return; // the upstream is down: the client sees the connection close
    };
    let _ = server.set_nodelay(true);
    let generation = start.generation;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let reader = Arc::new(AtomicBool::new(false));
    let up = pump(
        client_read,
        server_write,
        state.clone(),
        generation,
        Some(reader.clone()),
    );
    let down = pump(server_read, client_write, state.clone(), generation, None);
    let cut = async {
        let _ = state
            .wait_for(|s| {
                s.cut_before > generation
                    || (s.cut_commands_before > generation && !reader.load(Ordering::Relaxed))
            })
            .await;
    };
    tokio::select! {
        () = up => {}
        () = down => {}
        () = cut => {}
    }
}

/// Copies one direction, applying the fault to each chunk as it is read.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    generation: u64,
    xread_seen: Option<Arc<AtomicBool>>,
) {
    // Reads are timestamped and queued, so a delay is latency, not a throughput cap.
    let (queue, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, bytes)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let _ = state.wait_for(|s| s.fault != Fault::Stall).await;
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let now = *state.borrow();
            if now.fault == Fault::Stall {
                // Stalled while this read was pending: hold the bytes until it ends.
                let _ = state.wait_for(|s| s.fault != Fault::Stall).await;
            }
            if let Some(seen) = &xread_seen
                && buffer[..n]
                    .windows(5)
                    .any(|w| w.eq_ignore_ascii_case(b"XREAD"))
            {
                seen.store(true, Ordering::Relaxed);
            }
            let now = *state.borrow();
            if now.fault == Fault::Blackhole || generation < now.blackholed_before {
                continue;
            }
            let due = match now.fault {
                Fault::Delay(delay) => Instant::now() + delay,
                _ => Instant::now(),
            };
            if queue.send((due, buffer[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
}
