//! The stack under test, on loopback ports: the broker (tansu), the
//! database (PostgreSQL 15 + TimescaleDB Community by default; PGlite +
//! TimescaleDB, or a native PostgreSQL 17 with the Apache edition of
//! TimescaleDB in a debootstrapped root, on request), `processor migrate`,
//! then the processor and the gateway as child processes.
//!
//! The broker and the default database are started by the end-to-end test
//! harness (the `e2e` package), so the benchmark runs the services exactly
//! as the tests do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use e2e::{free_port, Broker, ChildProcess, Database};
use sha2::{Digest, Sha256};

use crate::pglite::PgliteDatabase;

/// The topic the gateway writes and the processor reads.
pub const TOPIC: &str = "usage-events";
const PARTITIONS: i32 = 6;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Which TimescaleDB the processor writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    /// PostgreSQL 15 + TimescaleDB 2.28.3 Community (TSL), the tests' database.
    Timescale,
    /// PGlite (PostgreSQL 17.5 in WASM) + TimescaleDB 2.23 with the TSL part.
    Pglite,
    /// Native PostgreSQL 17 + TimescaleDB, Apache edition, in this root.
    Native { root: PathBuf },
}

impl DatabaseKind {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Timescale => "PostgreSQL 15 + TimescaleDB 2.28.3 Community (TSL)",
            Self::Pglite => "PGlite 0.3.14 (PostgreSQL 17.5 WASM) + TimescaleDB 2.23 (TSL)",
            Self::Native { .. } => "native PostgreSQL 17 + TimescaleDB (Apache edition)",
        }
    }

    pub fn short(&self) -> &'static str {
        match self {
            Self::Timescale => "timescaledb",
            Self::Pglite => "pglite",
            Self::Native { .. } => "native",
        }
    }
}

/// A running database of either kind.
#[derive(Debug)]
pub enum RunningDatabase {
    Timescale(Database),
    Pglite(PgliteDatabase),
    Native(NativeDatabase),
}

impl RunningDatabase {
    pub fn url(&self) -> String {
        match self {
            Self::Timescale(db) => db.url(),
            Self::Pglite(db) => db.url(),
            Self::Native(db) => db.url(),
        }
    }

    /// The server's root pid (node, or the postmaster).
    pub fn pid(&mut self) -> Option<u32> {
        match self {
            Self::Timescale(db) => db.process().map(|p| p.pid()),
            Self::Pglite(db) => Some(db.process.pid()),
            Self::Native(db) => Some(db.process.pid()),
        }
    }
}

/// PostgreSQL 17 inside a debootstrapped root, run with chroot.
#[derive(Debug)]
pub struct NativeDatabase {
    port: u16,
    process: ChildProcess,
    /// The data directory as seen from outside the root.
    data_dir: std::path::PathBuf,
}

impl NativeDatabase {
    const BIN: &'static str = "/usr/lib/postgresql/17/bin";

    pub async fn start(root: &Path) -> anyhow::Result<NativeDatabase> {
        anyhow::ensure!(
            root.join("usr/lib/postgresql/17/bin/postgres").is_file(),
            "no PostgreSQL 17 under {}: run scripts/native-timescaledb.sh install",
            root.display()
        );
        remove_stale_data_dirs(root);
        let port = free_port();
        // Inside the root; /var/tmp is world-writable there.
        let data_dir = format!("/var/tmp/{DATA_DIR_PREFIX}{port}");
        let host_data_dir = root.join(data_dir.trim_start_matches('/'));
        if host_data_dir.exists() {
            std::fs::remove_dir_all(&host_data_dir)
                .with_context(|| format!("removing {}", host_data_dir.display()))?;
        }
        let root_s = root.to_string_lossy().into_owned();
        let initdb = std::process::Command::new("chroot")
            .args([
                "--userspec=postgres:postgres",
                &root_s,
                &format!("{}/initdb", Self::BIN),
                "-D",
                &data_dir,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .env("LANG", "C.UTF-8")
            .output()
            .context("running initdb in the native root (needs root for chroot)")?;
        if !initdb.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&initdb.stdout),
                String::from_utf8_lossy(&initdb.stderr)
            );
        }
        let port_s = port.to_string();
        let settings = [
            "listen_addresses=127.0.0.1".to_owned(),
            format!("port={port}"),
            "shared_preload_libraries=timescaledb".to_owned(),
            "timescaledb.telemetry_level=off".to_owned(),
            "unix_socket_directories=".to_owned(),
            "dynamic_shared_memory_type=mmap".to_owned(),
            "huge_pages=off".to_owned(),
            "shared_buffers=512MB".to_owned(),
            "max_connections=50".to_owned(),
            "max_wal_size=4GB".to_owned(),
        ];
        let mut args: Vec<String> = vec![
            "--userspec=postgres:postgres".into(),
            root_s,
            format!("{}/postgres", Self::BIN),
            "-D".into(),
            data_dir,
        ];
        for setting in settings {
            args.push("-c".into());
            args.push(setting);
        }
        let mut process = ChildProcess::spawn("postgres", "chroot", &args, &[("LANG", "C.UTF-8")]);
        process
            .wait_for_log(
                "database system is ready to accept connections",
                READY_TIMEOUT,
            )
            .await;
        let _ = port_s;
        Ok(NativeDatabase {
            port,
            process,
            data_dir: host_data_dir,
        })
    }

    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    pub async fn stop(mut self) {
        // SIGINT is PostgreSQL's fast shutdown.
        self.process.signal(nix::sys::signal::Signal::SIGINT);
        if self
            .process
            .wait_exit(Duration::from_secs(15))
            .await
            .is_none()
        {
            self.process.kill9();
        }
        // A full run leaves gigabytes of table and WAL behind.
        if let Err(error) = std::fs::remove_dir_all(&self.data_dir) {
            eprintln!("bench: cannot remove {}: {error}", self.data_dir.display());
        }
    }
}

const DATA_DIR_PREFIX: &str = "tokenledger-bench-";

/// Removes data directories that earlier runs left in the native root when
/// they were killed, unless their postmaster is still alive.
fn remove_stale_data_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join("var/tmp")) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(DATA_DIR_PREFIX)
        {
            continue;
        }
        let alive = std::fs::read_to_string(entry.path().join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().map(str::trim).map(str::to_owned))
            .is_some_and(|pid| Path::new("/proc").join(pid).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Everything the benchmark started.
#[derive(Debug)]
pub struct Stack {
    pub broker: Broker,
    pub database: RunningDatabase,
    pub processor: ChildProcess,
    pub gateway: ChildProcess,
    pub gateway_url: String,
    pub gateway_admin_url: String,
    pub processor_metrics_url: String,
    pub api_key: String,
    pub migrate_output: String,
    _config_dir: tempdir::Dir,
}

/// Extra settings for the binaries (`TOKENLEDGER_…=value`), for tuning runs.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub processor: Vec<(String, String)>,
    pub gateway: Vec<(String, String)>,
}

mod tempdir {
    /// A directory removed on drop.
    #[derive(Debug)]
    pub struct Dir(pub std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The directory holding this executable: cargo puts the workspace's
/// binaries next to each other.
pub fn default_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the benchmark executable")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("the executable has no directory")
}

fn binary(bin_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} not found: build with `cargo build --release -p gateway -p processor -p bench`",
        path.display()
    );
    Ok(path)
}

impl Stack {
    pub async fn start(
        kind: &DatabaseKind,
        bin_dir: &Path,
        overrides: &Overrides,
    ) -> anyhow::Result<Stack> {
        let processor_bin = binary(bin_dir, "processor")?;
        let gateway_bin = binary(bin_dir, "gateway")?;

        eprintln!("bench: starting the broker");
        let broker = Broker::start().await;
        broker.create_topic(TOPIC, PARTITIONS).await;
        eprintln!("bench: starting the database ({})", kind.label());
        let database = match kind {
            DatabaseKind::Timescale => RunningDatabase::Timescale(Database::start().await),
            DatabaseKind::Pglite => RunningDatabase::Pglite(PgliteDatabase::start().await?),
            DatabaseKind::Native { root } => {
                RunningDatabase::Native(NativeDatabase::start(root).await?)
            }
        };
        let db_url = database.url();

        let migrate = std::process::Command::new(&processor_bin)
            .arg("migrate")
            .env("TOKENLEDGER_DATABASE__URL", &db_url)
            .env("TOKENLEDGER_LOG", "warn")
            .output()
            .context("running processor migrate")?;
        let migrate_output = format!(
            "{}{}",
            String::from_utf8_lossy(&migrate.stdout),
            String::from_utf8_lossy(&migrate.stderr)
        );
        anyhow::ensure!(
            migrate.status.success(),
            "processor migrate failed:\n{migrate_output}"
        );
        eprint!("bench: processor migrate:\n{migrate_output}");

        let config_dir = tempdir::Dir(
            std::env::temp_dir().join(format!("tokenledger-bench-{}", std::process::id())),
        );
        std::fs::create_dir_all(&config_dir.0)?;
        let api_key = format!("bench-admin-{}", uuid::Uuid::new_v4().simple());
        let key_hash = hex::encode(Sha256::digest(api_key.as_bytes()));
        let gateway_config = config_dir.0.join("gateway.toml");
        std::fs::write(
            &gateway_config,
            format!("[auth]\nkeys = [{{ sha256 = \"{key_hash}\", admin = true }}]\n"),
        )?;

        let brokers = broker.bootstrap();
        let metrics_port = free_port();
        let mut processor_env: Vec<(String, String)> = vec![
            ("TOKENLEDGER_KAFKA__BROKERS".into(), brokers.clone()),
            // Longer than the scenarios keep the processor stopped (SIGSTOP,
            // 20 s in the full catch-up): a member evicted meanwhile spends
            // its first seconds after resuming on rejoining the group, which
            // is not catching up.
            (
                "TOKENLEDGER_KAFKA__SESSION_TIMEOUT_MS".into(),
                "45000".into(),
            ),
            ("TOKENLEDGER_DATABASE__URL".into(), db_url.clone()),
            (
                "TOKENLEDGER_METRICS__LISTEN".into(),
                format!("127.0.0.1:{metrics_port}"),
            ),
            // "batch committed" at debug carries each batch's commit time
            // and offsets: the accept → commit latency is computed from it.
            (
                "TOKENLEDGER_LOG".into(),
                "info,processor::stream::pipeline=debug,tokio_postgres=warn".into(),
            ),
        ];
        processor_env.extend(overrides.processor.iter().cloned());
        let env_refs: Vec<(&str, &str)> = processor_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        eprintln!("bench: starting the processor");
        let mut processor = ChildProcess::spawn("processor", &processor_bin, &["run"], &env_refs);

        let gateway_port = free_port();
        let admin_port = free_port();
        let mut gateway_env: Vec<(String, String)> = vec![
            ("TOKENLEDGER_KAFKA__BROKERS".into(), brokers),
            (
                "TOKENLEDGER_HTTP__LISTEN".into(),
                format!("127.0.0.1:{gateway_port}"),
            ),
            (
                "TOKENLEDGER_HTTP__ADMIN_LISTEN".into(),
                format!("127.0.0.1:{admin_port}"),
            ),
            ("TOKENLEDGER_LOG".into(), "warn".into()),
            // The budget and reservation routes.
            ("TOKENLEDGER_DATABASE__URL".into(), db_url.clone()),
        ];
        gateway_env.extend(overrides.gateway.iter().cloned());
        let env_refs: Vec<(&str, &str)> = gateway_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let config_arg = gateway_config.to_string_lossy().into_owned();
        eprintln!("bench: starting the gateway");
        let gateway = ChildProcess::spawn(
            "gateway",
            &gateway_bin,
            &["--config", config_arg.as_str()],
            &env_refs,
        );

        let stack = Stack {
            broker,
            database,
            processor: {
                processor
                    .wait_for_log("partitions assigned at stored offsets", READY_TIMEOUT)
                    .await;
                processor
            },
            gateway,
            gateway_url: format!("http://127.0.0.1:{gateway_port}"),
            gateway_admin_url: format!("http://127.0.0.1:{admin_port}"),
            processor_metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
            api_key,
            migrate_output,
            _config_dir: config_dir,
        };
        let ready_url = format!("{}/readyz", stack.gateway_url);
        let client = reqwest::Client::new();
        let ready = e2e::wait_for(READY_TIMEOUT, || {
            let request = client.get(&ready_url).send();
            async move { request.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        anyhow::ensure!(
            ready,
            "the gateway did not become ready:\n{}",
            stack.gateway.log_tail()
        );
        Ok(stack)
    }

    pub fn db_url(&self) -> String {
        self.database.url()
    }

    /// Stops the binaries gracefully, then the services.
    pub async fn stop(mut self) {
        let grace = Duration::from_secs(15);
        self.gateway.shutdown(grace).await;
        self.processor.shutdown(grace).await;
        match self.database {
            RunningDatabase::Native(db) => db.stop().await,
            RunningDatabase::Timescale(mut db) => db.stop().await,
            RunningDatabase::Pglite(db) => db.stop().await,
        }
    }
}

/// One value of a Prometheus text exposition (first series of `name`,
/// labels ignored: the counters read here have none).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.parse().ok()).flatten()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_read_by_exact_name() {
        let text = "# HELP x\nfoo_total 3\nfoo_total_extra 9\nbar{a=\"b\"} 4.5\n";
        assert_eq!(metric_value(text, "foo_total"), Some(3.0));
        assert_eq!(metric_value(text, "bar"), Some(4.5));
        assert_eq!(metric_value(text, "baz"), None);
    }
}
