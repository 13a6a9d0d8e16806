//! A throw-away certificate authority, made with the `openssl` command: a server certificate
//! for `localhost` / `127.0.0.1`, a client certificate, and a second authority that signed
//! neither (a server a client must not trust).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sse-notify-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create the pki directory");
        let pki = Self { dir };
        pki.authority("ca");
        pki.authority("other-ca");
        std::fs::write(
            pki.path("server.ext"),
            // Client auth too: cluster nodes and replicas show it to each other.
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("write server.ext");
        std::fs::write(pki.path("client.ext"), "extendedKeyUsage=clientAuth\n")
            .expect("write client.ext");
        pki.signed("server", "localhost");
        pki.signed("client", "sse-notify");
        pki
    }

    /// `<name>.pem`, `<name>.key`, `<name>.ext` … in the directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn arg(&self, file: &str) -> String {
        self.path(file)
            .to_str()
            .expect("a UTF-8 temp path")
            .to_owned()
    }

    fn authority(&self, name: &str) {
        self.new_key(&[
            "-x509",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &self.arg(&format!("{name}.key")),
            "-out",
            &self.arg(&format!("{name}.pem")),
        ]);
    }

    fn signed(&self, name: &str, common_name: &str) {
        self.new_key(&[
            "-subj",
            &format!("/CN={common_name}"),
            "-keyout",
            &self.arg(&format!("{name}.key")),
            "-out",
            &self.arg(&format!("{name}.csr")),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &self.arg(&format!("{name}.csr")),
            "-CA",
            &self.arg("ca.pem"),
            "-CAkey",
            &self.arg("ca.key"),
            "-CAcreateserial",
            "-extfile",
            &self.arg(&format!("{name}.ext")),
            "-out",
            &self.arg(&format!("{name}.pem")),
        ]);
    }

    /// `openssl req -new` with a fresh P-256 key and `args`.
    fn new_key(&self, args: &[&str]) {
        let mut all = vec![
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ];
        all.extend_from_slice(args);
        self.openssl(&all);
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl is not installed (apt-get install openssl)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `redis-server` arguments that serve TLS only on `port` with the server certificate of the
/// authority in `pki` (a `Pki`'s directory).
pub fn server_args(pki: &Path, port: u16) -> Vec<String> {
    let file = |name: &str| pki.join(name).to_string_lossy().into_owned();
    [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &file("server.pem"),
        "--tls-key-file",
        &file("server.key"),
        "--tls-ca-cert-file",
        &file("ca.pem"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `redis-cli` arguments that connect over TLS with the client certificate.
pub fn cli_args(pki: &Path) -> Vec<String> {
    let file = |name: &str| pki.join(name).to_string_lossy().into_owned();
    [
        "--tls",
        "--cacert",
        &file("ca.pem"),
        "--cert",
        &file("client.pem"),
        "--key",
        &file("client.key"),
    ]
    .map(str::to_owned)
    .to_vec()
}

impl Pki {
    /// The service's flags for mutual TLS with this authority: its CA, the client certificate.
    pub fn service_flags(&self) -> Vec<String> {
        [
            "--redis-tls-ca-file",
            &self.arg("ca.pem"),
            "--redis-tls-cert-file",
            &self.arg("client.pem"),
            "--redis-tls-key-file",
            &self.arg("client.key"),
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
