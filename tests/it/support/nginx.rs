//! Debian's nginx running the shipped `deploy/nginx/sse-notify.conf`, with only the lines it
//! marks CHANGE filled in (instances, listen address, certificate) and its access log in a
//! temp directory. Stopped on drop.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::free_port;
use super::tls::Pki;

const SHIPPED: &str = include_str!("../../../deploy/nginx/sse-notify.conf");

pub struct Nginx {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

/// Replaces `from` in `text`, insisting it was there: a config change that drops a line the test
/// fills in must fail here, not test something else.
fn fill(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "deploy/nginx/sse-notify.conf no longer has {from:?}"
    );
    text.replace(from, to)
}

fn binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

impl Nginx {
    /// In front of the instances on `instances` (two ports, as in the shipped file).
    pub fn start(pki: &Pki, instances: [u16; 2]) -> Self {
        let dir = std::env::temp_dir().join(format!("sse-notify-nginx-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create the nginx directory");
        let port = free_port();
        let mut site = SHIPPED.to_owned();
        for (shipped, ours) in [
            ("10.0.0.11:8080", instances[0]),
            ("10.0.0.12:8080", instances[1]),
        ] {
            site = fill(&site, shipped, &format!("127.0.0.1:{ours}"));
        }
        site = fill(
            &site,
            "listen 443 ssl http2;",
            &format!("listen 127.0.0.1:{port} ssl http2;"),
        );
        site = fill(
            &site,
            "/etc/ssl/certs/notify.example.com.pem",
            &pki.arg("server.pem"),
        );
        site = fill(
            &site,
            "/etc/ssl/private/notify.example.com.key",
            &pki.arg("server.key"),
        );
        let log = dir.join("access.log");
        site = fill(
            &site,
            "/var/log/nginx/sse-notify.access.log",
            log.to_str().expect("UTF-8"),
        );
        std::fs::write(dir.join("site.conf"), site).expect("write site.conf");
        let d = dir.to_str().expect("a UTF-8 temp path");
        // What nginx.conf around conf.d/ gives on Debian, reduced to what a test needs.
        let main = format!(
            "daemon off;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             access_log off;\n  include {d}/site.conf;\n}}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, main).expect("write nginx.conf");
        let tested = Command::new(binary())
            .arg("-t")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .output()
            .expect("nginx is not installed (apt-get install nginx)");
        assert!(
            tested.status.success(),
            "nginx -t refuses the shipped config: {}",
            String::from_utf8_lossy(&tested.stderr)
        );
        let child = Command::new(binary())
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx not listening within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, dir, port }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// A browser: its own connection (HTTP/2 over TLS), trusting the test authority.
    pub fn browser(pki: &Pki) -> reqwest::Client {
        let ca = std::fs::read(pki.path("ca.pem")).expect("read ca.pem");
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("a PEM CA"))
            .tls_built_in_root_certs(false)
            .build()
            .expect("a TLS client")
    }
}

impl Drop for Nginx {
    /// SIGTERM: the master stops its workers (a SIGKILLed master would leave them serving).
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
