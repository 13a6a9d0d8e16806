//! `sse-bench`: drives sse-notify or Nchan over loopback and reports what users feel (latency,
//! loss, duplicates) and what operators pay (memory per stream, Redis connections, CPU).
//! Prints a table, then one `RESULT {json}` line for scripts.

mod http;
mod probe;
mod sse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use http::{EventStream, Publisher};

/// mimalloc, as the service uses: glibc's malloc was a quarter of the generator's CPU in a
/// reconnect storm (perf), CPU that the servers it measures then lack on a shared machine.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    target: Target,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    SseNotify,
    Nchan,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// Which server speaks at `--addr`.
    #[arg(long, value_enum, default_value = "sse-notify", global = true)]
    target: Kind,
    #[arg(long, default_value = "127.0.0.1:8080", global = true)]
    addr: SocketAddr,
    /// sse-notify in jwt mode: the secret to mint member tokens with.
    #[arg(long, default_value = "bench-secret", global = true)]
    jwt_secret: String,
    #[arg(long, default_value = "bench-publish-token", global = true)]
    publish_token: String,
    /// The server's pid, to read its memory and CPU from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Redis's port, to count the server's connections to it.
    #[arg(long, global = true)]
    redis_port: Option<u16>,
    /// Redis's pid, to read its CPU time.
    #[arg(long, global = true)]
    redis_pid: Option<u32>,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open N idle streams: memory per stream, connect times, Redis connections.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Seconds to hold the streams open before measuring.
        #[arg(long, default_value_t = 5)]
        hold: u64,
    },
    /// One subscriber per member, publishers at a fixed or maximal rate: throughput, latency, loss.
    Fanout {
        #[arg(long, default_value_t = 1_000)]
        subscribers: usize,
        /// Notifications per second over all publishers; omitted = as fast as they go.
        #[arg(long)]
        rate: Option<u64>,
        #[arg(long, default_value_t = 20)]
        duration: u64,
        #[arg(long, default_value_t = 8)]
        publishers: usize,
    },
    /// Replay storm: every member missed `missed` notifications; all reconnect at once with their
    /// Last-Event-ID. Time until every client has caught up, exactly.
    Replay {
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        #[arg(long, default_value_t = 100)]
        missed: usize,
    },
    /// HTTP publishes as fast as `publishers` keep-alive connections go, nobody subscribed:
    /// publishes/s and publish latency (compare with `redis-benchmark`'s XADD ceiling).
    Publish {
        #[arg(long, default_value_t = 32)]
        publishers: usize,
        #[arg(long, default_value_t = 1_000)]
        members: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Produce records into Kafka and time them into Redis (sse-notify consuming `--topic`).
    Kafka {
        #[arg(long)]
        brokers: String,
        #[arg(long, default_value = "notifications")]
        topic: String,
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Members the records are spread over (key = member id).
        #[arg(long, default_value_t = 1_000)]
        members: usize,
        /// Only produce (run before the service starts, to measure its drain rate afterwards).
        #[arg(long)]
        produce_only: bool,
        /// The records were produced beforehand: measure from the first stored to the last.
        #[arg(long, conflicts_with = "produce_only")]
        preloaded: bool,
    },
}

impl Target {
    fn name(&self) -> &'static str {
        match self.target {
            Kind::SseNotify => "sse-notify",
            Kind::Nchan => "nchan",
        }
    }

    fn subscribe_path(&self, member: &str) -> String {
        match self.target {
            Kind::SseNotify => "/notification/subscribe".to_owned(),
            Kind::Nchan => format!("/sub/{member}"),
        }
    }

    fn subscribe_headers(&self, member: &str) -> Vec<(String, String)> {
        let mut headers = vec![("accept".to_owned(), "text/event-stream".to_owned())];
        if self.target == Kind::SseNotify {
            let token = sse_notify::http::auth::sign_hs256(
                &json!({ "sub": member }),
                self.jwt_secret.as_bytes(),
            );
            headers.push(("authorization".to_owned(), format!("Bearer {token}")));
        }
        headers
    }

    fn publish_path(&self, member: &str) -> String {
        match self.target {
            Kind::SseNotify => "/notifications".to_owned(),
            Kind::Nchan => format!("/pub/{member}"),
        }
    }

    fn publish_headers(&self) -> Vec<(String, String)> {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if self.target == Kind::SseNotify {
            headers.push((
                "authorization".to_owned(),
                format!("Bearer {}", self.publish_token),
            ));
        }
        headers
    }

    /// Our notifications are `event: notification`; Nchan's are unnamed messages.
    fn is_notification(&self, event: &sse::Event) -> bool {
        match self.target {
            Kind::SseNotify => event.event.as_deref() == Some("notification"),
            Kind::Nchan => event.event.is_none() && !event.data.is_empty(),
        }
    }

    /// Whether an open stream has been accepted: our `connected` event, or Nchan's 200 head.
    fn needs_connected_event(&self) -> bool {
        self.target == Kind::SseNotify
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Opens a stream and waits until the server accepted it.
async fn open(target: &Target, member: &str) -> anyhow::Result<EventStream> {
    let mut stream = EventStream::open(
        target.addr,
        &target.subscribe_path(member),
        &target.subscribe_headers(member),
    )
    .await?;
    if target.needs_connected_event() {
        loop {
            let events = stream
                .next_events()
                .await?
                .context("closed before connected")?;
            if events
                .iter()
                .any(|e| e.event.as_deref() == Some("connected"))
            {
                break;
            }
        }
    }
    Ok(stream)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    eprintln!("open-file limit: {limit}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        match cli.scenario {
            Scenario::Idle {
                streams,
                concurrency,
                hold,
            } => idle(&cli.target, streams, concurrency, hold).await,
            Scenario::Fanout {
                subscribers,
                rate,
                duration,
                publishers,
            } => fanout(&cli.target, subscribers, rate, duration, publishers).await,
            Scenario::Publish {
                publishers,
                members,
                duration,
            } => publish(&cli.target, publishers, members, duration).await,
            Scenario::Replay { members, missed } => replay(&cli.target, members, missed).await,
            Scenario::Kafka {
                brokers,
                topic,
                records,
                members,
                produce_only,
                preloaded,
            } => {
                let phase = if produce_only {
                    KafkaPhase::ProduceOnly
                } else if preloaded {
                    KafkaPhase::Drain
                } else {
                    KafkaPhase::Both
                };
                kafka(&cli.target, &brokers, &topic, records, members, phase).await
            }
        }
    })?;
    report(&result);
    Ok(())
}

fn report(result: &Value) {
    let mut out = String::new();
    if let Some(fields) = result.as_object() {
        for (name, value) in fields {
            out.push_str(&format!("{name:<28} {value}\n"));
        }
    }
    out.push_str(&format!("RESULT {result}\n"));
    std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes()).ok();
}

async fn idle(
    target: &Target,
    streams: usize,
    concurrency: usize,
    hold: u64,
) -> anyhow::Result<Value> {
    let run = format!("idle{}", now_micros() % 1_000_000);
    let before = target.server_pid.map(probe::memory).transpose()?;
    let gate = Arc::new(Semaphore::new(concurrency));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..streams {
        let (target, gate, stop, failures, opened) = (
            target.clone(),
            gate.clone(),
            stop.clone(),
            failures.clone(),
            opened_tx.clone(),
        );
        let member = format!("{run}-{i}");
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore open");
            let t0 = Instant::now();
            let stream = open(&target, &member).await;
            drop(permit);
            match stream {
                Ok(mut stream) => {
                    let _ = opened.send(t0.elapsed().as_micros() as u64);
                    // Hold it, reading heartbeats, until told to stop.
                    while !stop.load(Ordering::Relaxed) {
                        match tokio::time::timeout(Duration::from_millis(500), stream.next_events())
                            .await
                        {
                            Ok(Ok(Some(_))) | Err(_) => {}
                            Ok(_) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                }
                Err(error) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    let _ = opened.send(u64::MAX);
                    eprintln!("stream {member}: {error:#}");
                }
            }
        }));
    }
    drop(opened_tx);
    let mut connect_us = Vec::with_capacity(streams);
    while connect_us.len() < streams {
        match opened_rx.recv().await {
            Some(us) if us != u64::MAX => connect_us.push(us),
            Some(_) => {}
            None => break,
        }
        if connect_us.len() + failures.load(Ordering::Relaxed) as usize >= streams {
            break;
        }
    }
    let all_open = started.elapsed();
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let after = target.server_pid.map(probe::memory).transpose()?;
    let redis_connections = match (target.server_pid, target.redis_port) {
        (Some(pid), Some(port)) => Some(probe::connections_to(pid, port)?),
        _ => None,
    };
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    connect_us.sort_unstable();
    let open = connect_us.len() as u64;
    let per_stream = |pick: fn((u64, u64)) -> u64| match (before, after) {
        (Some(b), Some(a)) if open > 0 => Some(pick(a).saturating_sub(pick(b)) / open),
        _ => None,
    };
    Ok(json!({
        "scenario": "idle",
        "target": target.name(),
        "streams_asked": streams,
        "streams_open": open,
        "failures": failures.load(Ordering::Relaxed),
        "seconds_to_open_all": (all_open.as_secs_f64() * 100.0).round() / 100.0,
        "connect_ms_p50": percentile(&connect_us, 0.5) as f64 / 1000.0,
        "connect_ms_p99": percentile(&connect_us, 0.99) as f64 / 1000.0,
        "connect_ms_max": percentile(&connect_us, 1.0) as f64 / 1000.0,
        "rss_bytes_per_stream": per_stream(|m| m.0),
        "pss_bytes_per_stream": per_stream(|m| m.1),
        "server_rss_mb": after.map(|m| m.0 / 1_048_576),
        "redis_connections": redis_connections,
    }))
}

/// The payload a fan-out publisher sends: a per-member sequence number and a send time (µs).
#[derive(serde::Deserialize)]
struct Sample {
    content: SampleContent,
}

#[derive(serde::Deserialize)]
struct SampleContent {
    seq: u64,
    t: u64,
}

/// A replayed notification's number (other fields are not looked at, so not parsed into a tree).
#[derive(serde::Deserialize)]
struct Numbered {
    content: NumberedContent,
}

#[derive(serde::Deserialize)]
struct NumberedContent {
    seq: u64,
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u64>,
    delivered: u64,
    duplicates: u64,
    gaps: u64,
    last_seq: u64,
}

async fn fanout(
    target: &Target,
    subscribers: usize,
    rate: Option<u64>,
    duration: u64,
    publishers: usize,
) -> anyhow::Result<Value> {
    let run = format!("fan{}", now_micros() % 1_000_000);
    let members: Vec<String> = (0..subscribers).map(|i| format!("{run}-{i}")).collect();
    let mut readers = Vec::with_capacity(subscribers);
    let gate = Arc::new(Semaphore::new(200));
    let mut opening = Vec::with_capacity(subscribers);
    for member in &members {
        let (target, member, gate) = (target.clone(), member.clone(), gate.clone());
        opening.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore open");
            open(&target, &member).await
        }));
    }
    let mut streams = Vec::with_capacity(subscribers);
    for task in opening {
        streams.push(task.await?.context("a subscriber could not connect")?);
    }
    // Each reader records into its own (uncontended) Seen and is aborted at the end: no timer per
    // read, so the instrument spends its CPU on reading, not on bookkeeping.
    for mut stream in streams {
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok(Some(events)) = stream.next_events().await {
                let now = now_micros();
                let mut seen = record.lock().expect("reader state");
                for event in events {
                    let Ok(Sample { content }) = serde_json::from_str::<Sample>(&event.data) else {
                        continue;
                    };
                    let (seq, sent) = (content.seq, content.t);
                    seen.delivered += 1;
                    seen.latencies_us.push(now.saturating_sub(sent));
                    if seq <= seen.last_seq {
                        seen.duplicates += 1;
                    } else {
                        seen.gaps += seq - seen.last_seq - 1;
                        seen.last_seq = seq;
                    }
                }
            }
        });
        readers.push((task, seen));
    }

    let cpu = probe::CpuMeter::start(target.server_pid, target.redis_pid);
    let published = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(duration);
    let mut sending = Vec::new();
    for k in 0..publishers {
        let owned: Vec<String> = members
            .iter()
            .skip(k)
            .step_by(publishers)
            .cloned()
            .collect();
        let (target, published, errors) = (target.clone(), published.clone(), errors.clone());
        let interval = rate.map(|r| Duration::from_secs_f64(publishers as f64 / r as f64));
        sending.push(tokio::spawn(async move {
            let mut publisher = Publisher::new(target.addr);
            let headers = target.publish_headers();
            let mut seqs = vec![0u64; owned.len()];
            let mut ticker = interval.map(|i| {
                let mut t = tokio::time::interval(i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            let mut n = 0usize;
            while Instant::now() < deadline {
                if let Some(ticker) = &mut ticker {
                    ticker.tick().await;
                }
                let slot = n % owned.len();
                n += 1;
                seqs[slot] += 1;
                let member = &owned[slot];
                let body = json!({"member_id": member, "type": "bench", "content": {"seq": seqs[slot], "t": now_micros()}});
                match publisher.post(&target.publish_path(member), &headers, body.to_string().as_bytes()).await {
                    Ok(200..=299) => {
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) | Err(_) => {
                        seqs[slot] -= 1; // not stored: the next one reuses the number
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in sending {
        task.await?;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    // Let the last deliveries drain.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let [cpu_server, cpu_redis, cpu_loadgen] = cpu.percent(publish_secs);
    let mut latencies = Vec::new();
    let (mut delivered, mut duplicates, mut gaps) = (0, 0, 0);
    for (task, seen) in readers {
        task.abort();
        let seen = std::mem::take(&mut *seen.lock().expect("reader state"));
        latencies.extend(seen.latencies_us);
        delivered += seen.delivered;
        duplicates += seen.duplicates;
        gaps += seen.gaps;
    }
    latencies.sort_unstable();
    let published = published.load(Ordering::Relaxed);
    Ok(json!({
        "scenario": if rate.is_some() { "fanout-fixed" } else { "fanout-max" },
        "target": target.name(),
        "subscribers": subscribers,
        "publishers": publishers,
        "rate_asked": rate,
        "published": published,
        "publish_errors": errors.load(Ordering::Relaxed),
        "delivered": delivered,
        "delivered_per_sec": (delivered as f64 / publish_secs).round(),
        "lost": published.saturating_sub(delivered - duplicates),
        "gaps": gaps,
        "duplicates": duplicates,
        "latency_ms_p50": percentile(&latencies, 0.5) as f64 / 1000.0,
        "latency_ms_p99": percentile(&latencies, 0.99) as f64 / 1000.0,
        "latency_ms_max": percentile(&latencies, 1.0) as f64 / 1000.0,
        "cpu_pct_server": cpu_server,
        "cpu_pct_redis": cpu_redis,
        "cpu_pct_loadgen": cpu_loadgen,
    }))
}

async fn publish(
    target: &Target,
    publishers: usize,
    members: usize,
    duration: u64,
) -> anyhow::Result<Value> {
    let run = format!("pub{}", now_micros() % 1_000_000);
    let cpu = probe::CpuMeter::start(target.server_pid, target.redis_pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(duration);
    let mut sending = Vec::new();
    for k in 0..publishers {
        let (target, run) = (target.clone(), run.clone());
        sending.push(tokio::spawn(async move {
            let mut publisher = Publisher::new(target.addr);
            let headers = target.publish_headers();
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            let mut n = k;
            while Instant::now() < deadline {
                let member = format!("{run}-{}", n % members);
                n += publishers;
                let body = json!({"member_id": member, "type": "bench", "content": {"n": n, "text": "a notification of typical size"}});
                let t0 = Instant::now();
                match publisher.post(&target.publish_path(&member), &headers, body.to_string().as_bytes()).await {
                    Ok(200..=299) => latencies.push(t0.elapsed().as_micros() as u64),
                    Ok(_) | Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in sending {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    let [cpu_server, cpu_redis, cpu_loadgen] = cpu.percent(started.elapsed().as_secs_f64());
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(json!({
        "scenario": "publish",
        "target": target.name(),
        "publishers": publishers,
        "published": latencies.len(),
        "publish_errors": errors,
        "publishes_per_sec": (latencies.len() as f64 / secs).round(),
        "latency_ms_p50": percentile(&latencies, 0.5) as f64 / 1000.0,
        "latency_ms_p99": percentile(&latencies, 0.99) as f64 / 1000.0,
        "cpu_pct_server": cpu_server,
        "cpu_pct_redis": cpu_redis,
        "cpu_pct_loadgen": cpu_loadgen,
    }))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KafkaPhase {
    /// Produce, then wait until all are stored: end to end, limited by the broker's produce rate.
    Both,
    ProduceOnly,
    /// Records already in the topic: time from the first stored record to the last.
    Drain,
}

/// Produces `records` JSON records (keys spread over `members`), then times them into Redis by
/// watching sse-notify's `kafka_records_stored` counter.
async fn kafka(
    target: &Target,
    brokers: &str,
    topic: &str,
    records: usize,
    members: usize,
    phase: KafkaPhase,
) -> anyhow::Result<Value> {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let stored = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("sse_notify_kafka_records_stored_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    let mut client = Publisher::new(target.addr);
    let started = Instant::now();
    if phase != KafkaPhase::Drain {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000")
            .create()?;
        let run = now_micros() % 1_000_000;
        let mut pending = Vec::with_capacity(10_000);
        for n in 0..records {
            let key = format!("k{run}-{}", n % members);
            let value =
                json!({"type": "bench", "content": {"seq": n, "t": now_micros()}}).to_string();
            match producer.send_result(FutureRecord::to(topic).key(&key).payload(&value)) {
                Ok(delivery) => pending.push(delivery),
                Err((error, _)) => anyhow::bail!("produce failed: {error}"),
            }
            if pending.len() >= 10_000 {
                for delivery in pending.drain(..) {
                    delivery.await?.map_err(|(e, _)| e)?;
                }
            }
        }
        for delivery in pending {
            delivery.await?.map_err(|(e, _)| e)?;
        }
    }
    let produced_in = started.elapsed();
    if phase == KafkaPhase::ProduceOnly {
        return Ok(json!({
            "scenario": "kafka-produce",
            "records": records,
            "seconds_to_produce": (produced_in.as_secs_f64() * 100.0).round() / 100.0,
            "produced_per_sec": (records as f64 / produced_in.as_secs_f64()).round(),
        }));
    }
    let mut first_stored = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let now_stored = stored(&client.get_text("/metrics").await?);
        if now_stored > 0 && first_stored.is_none() {
            first_stored = Some(Instant::now());
        }
        if now_stored >= records as u64 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {now_stored} of {records} stored after 10 min"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed();
    let drain = first_stored.map_or(total, |t| t.elapsed());
    Ok(json!({
        "scenario": if phase == KafkaPhase::Drain { "kafka-drain" } else { "kafka-end-to-end" },
        "target": target.name(),
        "records": records,
        "members": members,
        "seconds_to_produce": (produced_in.as_secs_f64() * 100.0).round() / 100.0,
        "seconds_until_all_stored": (total.as_secs_f64() * 100.0).round() / 100.0,
        "records_per_sec_end_to_end": (records as f64 / total.as_secs_f64()).round(),
        "records_per_sec_from_first_stored": (records as f64 / drain.as_secs_f64()).round(),
    }))
}

/// Publishes one anchor per member (its id is the client's Last-Event-ID), then `missed` more per
/// member in `member_ids` batches, then reconnects every member at once and waits until each has
/// received exactly its `missed` notifications, in order.
async fn replay(target: &Target, members: usize, missed: usize) -> anyhow::Result<Value> {
    let run = format!("rep{}", now_micros() % 1_000_000);
    let names: Vec<String> = (0..members).map(|i| format!("{run}-{i}")).collect();
    let prepared = Instant::now();
    let anchors = match target.target {
        Kind::SseNotify => prepare_replay_batched(target, &names, missed).await?,
        Kind::Nchan => prepare_replay_per_channel(target, &names, missed).await?,
    };
    eprintln!(
        "published {} notifications in {:.1} s; reconnecting {members} clients",
        members * (missed + 1),
        prepared.elapsed().as_secs_f64()
    );

    let cpu = |pid: Option<u32>| pid.and_then(|p| probe::cpu_seconds(p).ok());
    let (server_cpu0, redis_cpu0) = (cpu(target.server_pid), cpu(target.redis_pid));
    let loadgen_cpu0 = cpu(Some(std::process::id()));
    let started = Instant::now();
    let mut clients = Vec::with_capacity(members);
    for (member, anchor) in names.iter().zip(anchors) {
        let target = target.clone();
        let member = member.clone();
        clients.push(tokio::spawn(async move {
            let mut headers = target.subscribe_headers(&member);
            headers.push(("last-event-id".to_owned(), anchor));
            let mut stream =
                EventStream::open(target.addr, &target.subscribe_path(&member), &headers).await?;
            let mut next = 1;
            while next <= missed {
                let events = stream
                    .next_events()
                    .await?
                    .context("closed before catching up")?;
                for event in events.iter().filter(|e| target.is_notification(e)) {
                    let data: Numbered = serde_json::from_str(&event.data)?;
                    anyhow::ensure!(data.content.seq == next as u64, "out of order or duplicate");
                    next += 1;
                }
            }
            Ok::<Duration, anyhow::Error>(started.elapsed())
        }));
    }
    let mut caught_up = Vec::with_capacity(members);
    let mut failures = 0;
    for client in clients {
        match client.await? {
            Ok(at) => caught_up.push(at.as_micros() as u64),
            Err(error) => {
                failures += 1;
                eprintln!("replay client: {error:#}");
            }
        }
    }
    let all = started.elapsed();
    caught_up.sort_unstable();
    Ok(json!({
        "scenario": "replay-storm",
        "target": target.name(),
        "members": members,
        "missed_each": missed,
        "clients_caught_up_exactly": caught_up.len(),
        "failures": failures,
        "seconds_until_all_caught_up": (all.as_secs_f64() * 100.0).round() / 100.0,
        "caught_up_s_p50": percentile(&caught_up, 0.5) as f64 / 1e6,
        "caught_up_s_p99": percentile(&caught_up, 0.99) as f64 / 1e6,
        "server_cpu_seconds": cpu(target.server_pid).zip(server_cpu0).map(|(b, a)| ((b - a) * 100.0).round() / 100.0),
        "redis_cpu_seconds": cpu(target.redis_pid).zip(redis_cpu0).map(|(b, a)| ((b - a) * 100.0).round() / 100.0),
        "loadgen_cpu_seconds": cpu(Some(std::process::id())).zip(loadgen_cpu0).map(|(b, a)| ((b - a) * 100.0).round() / 100.0),
    }))
}

/// sse-notify: an anchor notification per member, then `missed` more, 1,000 members per publish
/// (`member_ids`). Returns each member's anchor id.
async fn prepare_replay_batched(
    target: &Target,
    names: &[String],
    missed: usize,
) -> anyhow::Result<Vec<String>> {
    let headers = target.publish_headers();
    let mut publisher = Publisher::new(target.addr);
    let mut anchors = Vec::with_capacity(names.len());
    for batch in names.chunks(1_000) {
        anchors
            .extend(publish_batch(&mut publisher, &headers, batch, json!({"anchor": true})).await?);
    }
    for seq in 1..=missed {
        for batch in names.chunks(1_000) {
            publish_batch(&mut publisher, &headers, batch, json!({"seq": seq})).await?;
        }
    }
    Ok(anchors)
}

/// Nchan publishes to one channel per request: the same notifications from 32 keep-alive
/// publishers, each owning a slice of the channels (so each channel's order holds). The anchor id
/// comes from Nchan's publish answer (`last message id: ...`).
async fn prepare_replay_per_channel(
    target: &Target,
    names: &[String],
    missed: usize,
) -> anyhow::Result<Vec<String>> {
    const PUBLISHERS: usize = 32;
    let mut tasks = Vec::new();
    for k in 0..PUBLISHERS {
        let owned: Vec<(usize, String)> = names
            .iter()
            .cloned()
            .enumerate()
            .skip(k)
            .step_by(PUBLISHERS)
            .collect();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let headers = target.publish_headers();
            let mut publisher = Publisher::new(target.addr);
            let mut anchors = Vec::with_capacity(owned.len());
            for seq in 0..=missed {
                for (i, member) in &owned {
                    let content = if seq == 0 {
                        json!({"anchor": true})
                    } else {
                        json!({"seq": seq})
                    };
                    let body = json!({"member_id": member, "type": "bench", "content": content});
                    let (status, answer) = publisher
                        .post_for_body(
                            &target.publish_path(member),
                            &headers,
                            body.to_string().as_bytes(),
                        )
                        .await?;
                    anyhow::ensure!((200..300).contains(&status), "publish answered {status}");
                    if seq == 0 {
                        let answer = String::from_utf8_lossy(&answer);
                        let id = answer
                            .lines()
                            .find_map(|l| l.trim().strip_prefix("last message id: "))
                            .context("no message id in Nchan's publish answer")?;
                        anchors.push((*i, id.to_owned()));
                    }
                }
            }
            Ok::<_, anyhow::Error>(anchors)
        }));
    }
    let mut anchors = vec![String::new(); names.len()];
    for task in tasks {
        for (i, id) in task.await?? {
            anchors[i] = id;
        }
    }
    Ok(anchors)
}

/// One publish to many members (`member_ids`); the ids it created, in member order.
async fn publish_batch(
    publisher: &mut Publisher,
    headers: &[(String, String)],
    batch: &[String],
    content: Value,
) -> anyhow::Result<Vec<String>> {
    let body = json!({"member_ids": batch, "type": "bench", "content": content}).to_string();
    let (status, body) = publisher
        .post_for_body("/notifications", headers, body.as_bytes())
        .await?;
    anyhow::ensure!(status == 201, "publish answered {status}");
    let ids: Value = serde_json::from_slice(&body)?;
    Ok(ids["ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect())
}
