//! TLS endpoints for a test, all on loopback: a throwaway certificate authority made by the test
//! ([`TestCa`]), a real PostgreSQL 15 cluster with `ssl = on` ([`TlsPostgres`]), and stunnel
//! terminating TLS in front of a plain service ([`Stunnel`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tempfile::TempDir;

use crate::{free_port, required_path, wait_for, ChildProcess};

/// A certificate authority that exists for one test: its certificate in `ca.pem` in a
/// temporary directory, leaf certificates issued next to it.
#[derive(Debug)]
pub struct TestCa {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("tokenledger-ca-")
            .tempdir()
            .expect("temporary directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("tokenledger test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write ca.pem");
        TestCa {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A certificate for `names` (DNS names, or IP addresses when they parse as one), with
    /// `common_name` as its subject (PostgreSQL maps a client certificate's CN to a role).
    pub fn issue(&self, file_stem: &str, common_name: &str, names: &[&str]) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().expect("DNS name")),
            });
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let issued = Issued {
            cert: self.dir.path().join(format!("{file_stem}.crt")),
            key: self.dir.path().join(format!("{file_stem}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write certificate");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key");
        issued
    }
}

/// PostgreSQL 15 from Debian (`/usr/lib/postgresql/15`, installed by `scripts/services.sh`),
/// a fresh cluster owned by the `postgres` user, serving TLS only on a free loopback port
/// ([`TlsPostgres::start_plain`]: no TLS at all).
/// `pg_hba.conf`: role `certuser` must present a client certificate (`cert`), every other
/// role is trusted over TLS, plaintext is rejected. Drop stops it.
#[derive(Debug)]
pub struct TlsPostgres {
    dir: TempDir,
    pub port: u16,
    process: Option<ChildProcess>,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl TlsPostgres {
    pub async fn start(ca: &TestCa, server: &Issued) -> TlsPostgres {
        Self::start_with(Some((ca, server))).await
    }

    /// The same cluster with `ssl = off`: a server that speaks no TLS at all.
    pub async fn start_plain() -> TlsPostgres {
        Self::start_with(None).await
    }

    async fn start_with(tls: Option<(&TestCa, &Issued)>) -> TlsPostgres {
        let postgres = Path::new(PG_BIN).join("postgres");
        assert!(
            postgres.is_file(),
            "{} is missing: run scripts/services.sh install (it installs postgresql-15)",
            postgres.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("tokenledger-pgtls-")
            .tempdir()
            .expect("temporary directory");
        let data = dir.path().join("data");
        if let Some((ca, server)) = tls {
            for (from, to) in [
                (server.cert.as_path(), "server.crt"),
                (server.key.as_path(), "server.key"),
                (ca.ca_pem().as_path(), "root.crt"),
            ] {
                std::fs::copy(from, dir.path().join(to)).expect("copy certificate");
            }
        }
        as_postgres(
            &["chown", "-R", "postgres:postgres", &path_str(dir.path())],
            false,
        );
        if tls.is_some() {
            as_postgres(
                &["chmod", "600", &path_str(&dir.path().join("server.key"))],
                false,
            );
        }
        as_postgres(
            &[
                &path_str(&Path::new(PG_BIN).join("initdb")),
                "-D",
                &path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
            true,
        );
        let common = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n",
            dir.path().display()
        );
        let (conf, hba) = if tls.is_some() {
            (
                format!(
                    "{common}ssl = on\nssl_cert_file = '{0}/server.crt'\n\
                     ssl_key_file = '{0}/server.key'\nssl_ca_file = '{0}/root.crt'\n",
                    dir.path().display()
                ),
                "hostssl all certuser 127.0.0.1/32 cert\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostnossl all all 127.0.0.1/32 reject\n\
                 local all all trust\n",
            )
        } else {
            (
                format!("{common}ssl = off\n"),
                "host all all 127.0.0.1/32 trust\nlocal all all trust\n",
            )
        };
        std::fs::write(data.join("postgresql.auto.conf"), conf).expect("write config");
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        as_postgres(
            &["chown", "-R", "postgres:postgres", &path_str(&data)],
            false,
        );
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(&postgres).args([
                "-D",
                &path_str(&data),
                "-p",
                &port.to_string(),
            ]);
            let mut process = ChildProcess::spawn_command("postgres-tls", cmd);
            if wait_for(Duration::from_secs(30), || async { port_open(port) }).await {
                // CREATE ROLE over the Unix socket: the TCP side only speaks TLS.
                as_postgres(
                    &[
                        &path_str(&Path::new(PG_BIN).join("psql")),
                        "-h",
                        &path_str(dir.path()),
                        "-p",
                        &port.to_string(),
                        "-U",
                        "postgres",
                        "-c",
                        "CREATE ROLE certuser LOGIN",
                    ],
                    true,
                );
                return TlsPostgres {
                    dir,
                    port,
                    process: Some(process),
                };
            }
            last = process.log_tail();
            process.kill9();
        }
        panic!("PostgreSQL with ssl = on did not start:\n{last}");
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill9();
        }
    }
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// Runs `args` as root (`as_user = false`) or as `postgres`; panics with its output on failure.
fn as_postgres(args: &[&str], as_user: bool) {
    let mut cmd = if as_user {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).args(args);
        cmd
    } else {
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..]);
        cmd
    };
    let output = cmd.output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// stunnel (Debian's `stunnel4`, `TOKENLEDGER_STUNNEL_BIN`) accepting TLS on a free loopback port
/// with `server`'s certificate and forwarding plaintext to `upstream`. Drop stops it.
#[derive(Debug)]
pub struct Stunnel {
    pub port: u16,
    _dir: TempDir,
    process: ChildProcess,
}

impl Stunnel {
    pub async fn start(server: &Issued, upstream: u16) -> Stunnel {
        Self::start_on(free_port(), server, upstream).await
    }

    /// On a chosen port: a broker must be told its advertised port before it starts.
    pub async fn start_on(port: u16, server: &Issued, upstream: u16) -> Stunnel {
        let bin = required_path("TOKENLEDGER_STUNNEL_BIN");
        let dir = tempfile::Builder::new()
            .prefix("tokenledger-stunnel-")
            .tempdir()
            .expect("temporary directory");
        let conf = dir.path().join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\nsyslog = no\ndebug = notice\n\n[tls]\n\
                 accept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{upstream}\n\
                 cert = {}\nkey = {}\n",
                server.cert.display(),
                server.key.display()
            ),
        )
        .expect("write stunnel.conf");
        let mut process = ChildProcess::spawn("stunnel", bin, &[conf.as_os_str()], &[]);
        if !wait_for(Duration::from_secs(10), || async { port_open(port) }).await {
            process.assert_running();
            panic!("stunnel did not listen on {port}:\n{}", process.log_tail());
        }
        Stunnel {
            port,
            _dir: dir,
            process,
        }
    }

    pub fn log(&self) -> String {
        self.process.log_contents()
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}
