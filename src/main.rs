//! The `sse-notify` binary: configuration, logging, the listener and signals; then `app::run`, or
//! the `migrate-zset` command.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser as _;
use sse_notify::app;
use sse_notify::config::{self, Args, Command, Config, MigrateArgs, Storage};
use sse_notify::migrate::{self, Options, Report};
use sse_notify::store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// mimalloc: glibc's allocator spent a sixth of the CPU of a publish-heavy load in malloc/free and
/// in its arena locks (perf, BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits' EX_USAGE: a configuration the service refuses to start with.
const EXIT_BAD_CONFIG: u8 = 64;
/// Worker threads `TOKIO_WORKER_THREADS` may ask for: beyond, a typo, not a machine.
const MAX_WORKER_THREADS: usize = 1024;

fn main() -> ExitCode {
    let mut args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            // `--help` and `--version` print to stdout and succeed; anything else is a refused
            // configuration, like an out-of-range value.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_BAD_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let command = args.command.take();
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    // The configuration first: the worker count depends on where Redis is.
    let job = match command {
        Some(Command::MigrateZset(migrate_args)) => match Storage::from_args(&args) {
            Ok(storage) => Job::Migrate(storage, migrate_args),
            Err(error) => return refused(&error),
        },
        None => match Config::try_from(args) {
            Ok(config) => Job::Serve(Box::new(config)),
            Err(error) => return refused(&error),
        },
    };
    let storage = match &job {
        Job::Migrate(storage, _) => storage,
        Job::Serve(config) => &config.storage,
    };
    let workers = match worker_threads(storage.redis.on_this_host()) {
        Ok(workers) => workers,
        Err(message) => {
            eprintln!("sse-notify: {message}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match job {
        Job::Migrate(storage, migrate_args) => {
            runtime.block_on(migrate_zset(storage, migrate_args))
        }
        Job::Serve(config) => runtime.block_on(serve(*config)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "sse-notify stopped");
            ExitCode::FAILURE
        }
    }
}

/// Pending connections the kernel may queue: a fleet of browsers reconnecting at once (after a
/// deploy) must not overflow it, or their SYNs are dropped and retried seconds later. The kernel
/// caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 65_535;

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = listen(config.listen_addr)
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(addr = %config.listen_addr, workers, "listening");
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    app::run(config, listener, shutdown).await
}

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// SIGTERM or SIGINT starts draining.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT stops the service");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
    shutdown.cancel();
}

/// What the binary was asked to do, once its configuration is accepted.
enum Job {
    Serve(Box<Config>),
    Migrate(Storage, MigrateArgs),
}

/// The runtime's worker threads: `TOKIO_WORKER_THREADS` when set (1 to `MAX_WORKER_THREADS`,
/// anything else refused like any other setting), else one per core, less one when Redis runs on
/// this machine: it needs a core of its own, and workers that take turns with it on every
/// notification wake each other across cores for nothing (on 2 cores with a local Redis, one
/// worker delivered a third more at the same CPU; BENCHMARKS.md, History "2026-12-03 (evening)").
fn worker_threads(redis_on_this_host: bool) -> Result<usize, String> {
    let value = match std::env::var("TOKIO_WORKER_THREADS") {
        Err(std::env::VarError::NotPresent) => {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            let spared = usize::from(redis_on_this_host);
            return Ok(cores.saturating_sub(spared).max(1));
        }
        Err(std::env::VarError::NotUnicode(_)) => String::from("(not UTF-8)"),
        Ok(value) => value,
    };
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_WORKER_THREADS).contains(&n) => Ok(n),
        _ => Err(format!(
            "TOKIO_WORKER_THREADS={value}: a number of worker threads from 1 to {MAX_WORKER_THREADS} (unset: one per core, less one when Redis is on this machine)"
        )),
    }
}

fn refused(error: &config::ConfigError) -> ExitCode {
    eprintln!("sse-notify: {error}");
    ExitCode::from(EXIT_BAD_CONFIG)
}

/// Runs the migration, with progress on stderr (a line every 2 s) and a summary on stdout.
async fn migrate_zset(storage: Storage, migrate_args: MigrateArgs) -> anyhow::Result<()> {
    let target = &storage.redis;
    let store = Store::new(target, storage.retention, storage.max_per_member, None)
        .context("invalid REDIS_URL")?;
    store
        .ping()
        .await
        .with_context(|| format!("cannot reach redis at {target}"))?;
    let options = Options {
        dry_run: migrate_args.dry_run,
        pattern: migrate_args.pattern,
        delete_source: migrate_args.delete_source,
        batch: migrate_args.batch as usize,
    };
    // SCAN has no total; the key count at the start gives a fair percentage.
    let total_keys = store.key_count().await.unwrap_or(0).max(1);
    let interactive = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    let report = migrate::run(&store, &options, |report| {
        if interactive {
            eprint!("\r{}", progress_line(report, total_keys));
        } else if last_line.elapsed() >= Duration::from_secs(2) {
            last_line = Instant::now();
            let line = progress_line(report, total_keys);
            tracing::info!(progress = line.trim_end_matches("\x1b[K"), "migrating");
        }
    })
    .await
    .context("migration stopped; run it again to finish (nothing moves twice)")?;
    if interactive {
        eprintln!();
    }
    let summary = summary(&report, options.dry_run);
    std::io::Write::write_all(&mut std::io::stdout(), summary.as_bytes())
        .context("cannot write the summary")?;
    Ok(())
}

/// One short line (it is redrawn in place on a terminal, so it must not wrap).
fn progress_line(report: &Report, total_keys: u64) -> String {
    let percent = (report.keys_scanned * 100 / total_keys).min(100);
    let bar: String = (0..20)
        .map(|i| if i * 5 < percent { '#' } else { '.' })
        .collect();
    format!(
        "[{bar}] {percent:>3}% {} keys, {} entries moved, {:.1} s\x1b[K",
        report.keys_scanned,
        report.entries_moved,
        report.elapsed.as_secs_f64()
    )
}

fn summary(report: &Report, dry_run: bool) -> String {
    let verb = if dry_run { "would move" } else { "moved" };
    let mut out = format!(
        "{}migrate-zset: {verb} {} entries of {} keys in {:.2} s\n  keys scanned:           {}\n  entries already there:  {}\n  entries expired:        {}\n  entries skipped:        {} ({})\n",
        if dry_run { "[dry run] " } else { "" },
        report.entries_moved,
        report.keys_moved,
        report.elapsed.as_secs_f64(),
        report.keys_scanned,
        report.entries_already_there,
        report.entries_expired,
        report.entries_skipped,
        migrate::NOT_THE_EXPECTED_JSON,
    );
    for (reason, count) in &report.keys_skipped {
        out.push_str(&format!("  keys skipped:           {count} ({reason})\n"));
    }
    for (what, reason) in &report.examples {
        out.push_str(&format!("  left alone: {what} ({reason})\n"));
    }
    out
}
