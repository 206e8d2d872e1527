//! TimescaleDB for a test: a fresh PostgreSQL 15 cluster with TimescaleDB 2.28.3 Community
//! (continuous aggregates, compression, background job policies) per `Database`, on a free
//! loopback port, its data in a temporary directory that survives a stop and start (for database
//! outage tests) and is removed on drop. Also applies sql/ migrations the way `processor migrate`
//! does, for tests that need the schema without the processor.
//!
//! This is a real multi-connection server: row locks, lock waits, deadlocks and advisory locks
//! behave as in production, and the refresh and compression policies run by themselves in
//! TimescaleDB's background workers. `scripts/services.sh install` builds it once.

use std::hash::{Hash, Hasher};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid, User};
use tempfile::TempDir;
use tokio_postgres::{Client, NoTls};

use crate::{free_port, repo_root, ChildProcess};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(30);
const READY_LINE: &str = "database system is ready to accept connections";
/// How often a start is retried when another process took the free port first.
const PORT_ATTEMPTS: usize = 5;

/// The settings of every test cluster. Small buffers so that many clusters fit in memory at
/// once; fsync off because a cluster lives for one test and a crash test kills the server, not
/// the machine (synchronous_commit stays on, so a SIGKILLed server keeps every acknowledged
/// commit); mmap dynamic shared memory so that nothing outlives the data directory.
const SETTINGS: &str = "
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
timescaledb.max_background_workers = 8
max_worker_processes = 16
max_connections = 100
shared_buffers = 16MB
dynamic_shared_memory_type = mmap
fsync = off
full_page_writes = off
log_lock_waits = on
";

/// A running PostgreSQL + TimescaleDB cluster. Drop shuts it down immediately and removes its
/// data.
#[derive(Debug)]
pub struct Database {
    bin_dir: PathBuf,
    port: u16,
    /// Held for its drop, which removes the cluster's files.
    _root: TempDir,
    data: PathBuf,
    owner: Option<(Uid, Gid)>,
    process: Option<ChildProcess>,
}

impl Database {
    /// Initialises and starts a fresh, empty cluster on a free port. Panics if
    /// `TOKENLEDGER_PG_BIN_DIR` is not set (run scripts/test.sh).
    pub async fn start() -> Database {
        let bin_dir = pg_bin_dir();
        let root = tempfile::Builder::new()
            .prefix("tokenledger-e2e-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a data directory: {e}"));
        // PostgreSQL refuses to run as root: as root, the cluster belongs to `postgres`.
        let owner = Uid::effective().is_root().then(|| {
            let user = User::from_name("postgres")
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("running as root and there is no `postgres` user"));
            std::os::unix::fs::chown(
                root.path(),
                Some(user.uid.as_raw()),
                Some(user.gid.as_raw()),
            )
            .unwrap_or_else(|e| panic!("cannot give {} to postgres: {e}", root.path().display()));
            (user.uid, user.gid)
        });
        let data = root.path().join("data");
        let mut db = Database {
            bin_dir,
            port: 0,
            _root: root,
            data,
            owner,
            process: None,
        };
        db.initdb();
        for attempt in 1..=PORT_ATTEMPTS {
            match db.launch(free_port()).await {
                Ok(()) => return db,
                Err(log) if attempt < PORT_ATTEMPTS => drop(log),
                Err(log) => panic!("postgres could not bind a free port; log:\n{log}"),
            }
        }
        unreachable!("the last attempt panics")
    }

    /// `program` (a PostgreSQL program, or an absolute path) run as the cluster's owner.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        cmd
    }

    /// A new cluster is a copy of a template cluster (made once by the first test that needs
    /// it and kept in the temporary directory, keyed by the server binary and the settings):
    /// a copy takes a tenth of an initdb.
    fn initdb(&self) {
        let template = self.template();
        let output = self
            .command("/bin/cp")
            .arg("-a")
            .arg(&template)
            .arg(self.data_dir())
            .output()
            .unwrap_or_else(|e| panic!("cannot run cp: {e}"));
        assert!(
            output.status.success(),
            "cannot copy the template cluster {}: {}",
            template.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn template(&self) -> PathBuf {
        let server = self.bin_dir.join("postgres");
        let meta = std::fs::metadata(&server)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", server.display()));
        let mut hasher = std::hash::DefaultHasher::new();
        (
            &self.bin_dir,
            meta.len(),
            meta.modified().ok(),
            SETTINGS,
            self.owner,
        )
            .hash(&mut hasher);
        let dir =
            std::env::temp_dir().join(format!("tokenledger-pg-template-{:016x}", hasher.finish()));
        if dir.join("PG_VERSION").is_file() {
            return dir;
        }
        // Made aside and renamed into place: tests starting at once each make one, the first
        // rename wins and the others are dropped.
        let staging = tempfile::Builder::new()
            .prefix("tokenledger-pg-template-new-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a directory for the template cluster: {e}"));
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(staging.path(), Some(uid.as_raw()), Some(gid.as_raw()))
                .unwrap_or_else(|e| {
                    panic!("cannot give {} to postgres: {e}", staging.path().display())
                });
        }
        let data = staging.path().join("data");
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
            ])
            .args(["--locale=C.UTF-8", "--no-instructions"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}"));
        assert!(
            output.status.success(),
            "initdb failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", conf.display()));
        text.push_str(SETTINGS);
        std::fs::write(&conf, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
        if let Err(e) = std::fs::rename(&data, &dir) {
            if !dir.join("PG_VERSION").is_file() {
                panic!("cannot move the template cluster to {}: {e}", dir.display());
            }
        }
        dir
    }

    /// Starts the postmaster on `port` and waits until it accepts connections. Err(log) when the
    /// port was taken; any other failure panics with the server's log.
    async fn launch(&mut self, port: u16) -> Result<(), String> {
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &port.to_string()])
            // Its own process group: kill9 and drop reach the backends and background workers.
            .process_group(0);
        let mut process = ChildProcess::spawn_command("postgres", cmd);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let log = process.log_contents();
            if log.contains(READY_LINE) {
                break;
            }
            if process.try_status().is_some() {
                if log.contains("could not bind IPv4 address") {
                    return Err(log);
                }
                panic!("postgres exited during startup; log:\n{log}");
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("postgres not ready after {READY_TIMEOUT:?}; log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.port = port;
        self.process = Some(process);
        Ok(())
    }

    /// libpq-style connection string, also accepted by tokio-postgres.
    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (kept across stop / start_again, removed on drop).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// A connected client; its connection task runs on the test's runtime. Each call is a new
    /// connection (a backend of its own), so a test can hold locks in one and contend in another.
    pub async fn client(&self) -> Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the database at {}: {e}", self.url()));
        tokio::spawn(async move {
            // The error surfaces on the client's next call; nothing to add here.
            let _ = connection.await;
        });
        client
    }

    /// Applies every `sql/V<N>__*.sql` with `processor migrate`'s own runner
    /// ([`store::migrate`]): in version order, each once, recorded with its checksum.
    pub async fn migrate(&self) {
        let mut client = self.client().await;
        let dir = repo_root().join("sql");
        let migrations = store::migrate::from_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read the migrations in {}: {e}", dir.display()));
        store::migrate::apply(&mut client, &migrations)
            .await
            .unwrap_or_else(|e| panic!("cannot apply the migrations: {e}"));
    }

    /// Stops the server with a fast shutdown (open sessions are ended, committed data is kept):
    /// an outage.
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.signal(Signal::SIGINT);
            let status = process.wait_exit(STOP_GRACE).await;
            if !status.is_some_and(|s| s.success()) {
                panic!(
                    "postgres did not stop cleanly ({status:?}); log:\n{}",
                    process.log_tail()
                );
            }
        }
    }

    /// Kills the server and every backend without a chance to flush (a crash). Acknowledged
    /// commits survive (crash recovery replays the WAL on [`Database::start_again`]).
    pub fn kill9(&mut self) {
        if let Some(mut process) = self.process.take() {
            kill_group(&process, Signal::SIGKILL);
            process.kill9();
        }
    }

    /// Starts the server again on the same port with the same data.
    pub async fn start_again(&mut self) {
        assert!(
            self.process.is_none(),
            "start_again: the database is still running"
        );
        let port = self.port;
        if let Err(log) = self.launch(port).await {
            panic!("postgres could not take its port {port} again; log:\n{log}");
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// The server's process, e.g. for its log (lock waits and deadlocks are logged there).
    pub fn process(&mut self) -> Option<&mut ChildProcess> {
        self.process.as_mut()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            // Immediate shutdown: the postmaster ends its children and releases its shared
            // memory, which a SIGKILL would leak; the data is about to be removed anyway.
            process.signal(Signal::SIGQUIT);
            // Drop cannot await; a short blocking wait lets the server exit before its data
            // directory is removed.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while process.is_running() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            kill_group(&process, Signal::SIGKILL);
            // ChildProcess's drop kills the postmaster if it is still running.
        }
    }
}

/// Sends `signal` to the server's process group (the postmaster, its backends and workers).
fn kill_group(process: &ChildProcess, signal: Signal) {
    let pgid = i32::try_from(process.pid()).unwrap_or(i32::MAX);
    let _ = kill(Pid::from_raw(-pgid), signal);
}

/// `TOKENLEDGER_PG_BIN_DIR`, checked to hold PostgreSQL's server programs.
fn pg_bin_dir() -> PathBuf {
    let hint = "run scripts/test.sh (it installs PostgreSQL + TimescaleDB and exports this \
                variable), or `scripts/services.sh install && eval \"$(scripts/services.sh env)\"`";
    let dir = std::env::var_os("TOKENLEDGER_PG_BIN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("TOKENLEDGER_PG_BIN_DIR is not set: {hint}"));
    for program in ["initdb", "postgres"] {
        if !dir.join(program).is_file() {
            panic!(
                "TOKENLEDGER_PG_BIN_DIR={} has no {program}: {hint}",
                dir.display()
            );
        }
    }
    dir
}
