//! TimescaleDB for a test: tools/pglite/server.mjs (PGlite + TimescaleDB 2.23) on a free
//! loopback port, with its data in a temporary directory so it survives a stop and start (for
//! database outage tests). Also applies sql/ migrations the way `processor migrate` does, for
//! tests that need the schema without the processor.
//!
//! PGlite is one backend session shared by all connections, one transaction at a time, and has
//! no background workers: refresh continuous aggregates and run jobs explicitly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tokio_postgres::{Client, NoTls};

use crate::{repo_root, required_path, ChildProcess};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
const READY_LINE: &str = "pglite-tcp listening on 127.0.0.1:";

/// First line of a migration that must run outside a transaction, statement by statement (see
/// sql/README.md).
pub const NO_TRANSACTION_MARKER: &str = "-- tokenledger:no-transaction";

/// A running PGlite + TimescaleDB server. Drop sends SIGTERM, then kills.
#[derive(Debug)]
pub struct Database {
    node: PathBuf,
    server: PathBuf,
    port: u16,
    data_dir: TempDir,
    process: Option<ChildProcess>,
}

impl Database {
    /// Starts a fresh, empty database on a free port (PORT=0; the port comes from the ready line).
    /// Panics if `TOKENLEDGER_PGLITE_SERVER` or `TOKENLEDGER_NODE_BIN` is not set (run
    /// scripts/test.sh).
    pub async fn start() -> Database {
        let server = required_path("TOKENLEDGER_PGLITE_SERVER");
        let node = required_path("TOKENLEDGER_NODE_BIN");
        let data_dir = tempfile::Builder::new()
            .prefix("tokenledger-e2e-pgdata-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a data directory: {e}"));
        let mut db = Database {
            node,
            server,
            port: 0,
            data_dir,
            process: None,
        };
        db.launch(0).await;
        db
    }

    /// Starts server.mjs on `port` (0 = any) and waits for its ready line.
    async fn launch(&mut self, port: u16) {
        let port_s = port.to_string();
        let data_dir = self.data_dir.path().to_string_lossy().into_owned();
        let mut process = ChildProcess::spawn(
            "pglite",
            &self.node,
            &[&self.server],
            &[("PORT", &port_s), ("DATA_DIR", &data_dir)],
        );
        let log = process.wait_for_log(READY_LINE, READY_TIMEOUT).await;
        self.port = parse_port(&log).unwrap_or_else(|| {
            panic!("cannot read the port from pglite's ready line; log:\n{log}")
        });
        self.process = Some(process);
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
        self.data_dir.path()
    }

    /// A connected client; its connection task runs on the test's runtime.
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

    /// Runs one SQL file with the migration rules (transaction unless marked otherwise).
    pub async fn run_sql_file(&self, path: &Path) {
        let mut client = self.client().await;
        run_sql_file(&mut client, path).await;
    }

    /// Applies every `sql/V<N>__*.sql` in version order.
    pub async fn migrate(&self) {
        let mut client = self.client().await;
        apply_migrations(&mut client, &repo_root().join("sql")).await;
    }

    /// Stops the server gracefully (committed data is kept in the data directory): an outage.
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let status = process.shutdown(STOP_GRACE).await;
            if !status.is_some_and(|s| s.success()) {
                panic!(
                    "pglite did not stop cleanly ({status:?}); log:\n{}",
                    process.log_tail()
                );
            }
        }
    }

    /// Kills the server without a chance to flush (a crash). Data committed before may be lost
    /// with PGlite; prefer [`Database::stop`] for outage tests that check persistence.
    pub fn kill9(&mut self) {
        if let Some(mut process) = self.process.take() {
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
        self.launch(port).await;
        assert_eq!(self.port, port, "pglite came back on another port");
    }

    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// The server's process, e.g. for its log.
    pub fn process(&mut self) -> Option<&mut ChildProcess> {
        self.process.as_mut()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.sigterm();
            // Drop cannot await; a short blocking wait lets PGlite close its data directory
            // before the directory is removed.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while process.is_running() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // ChildProcess's drop kills it if it is still running.
        }
    }
}

fn parse_port(log: &str) -> Option<u16> {
    let rest = &log[log.find(READY_LINE)? + READY_LINE.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The migration files in `dir` (`V<N>__<name>.sql`), sorted by N.
pub fn migration_files(dir: &Path) -> Vec<(u32, PathBuf)> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read migrations in {}: {e}", dir.display()));
    let mut files: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let version = name.strip_prefix('V')?.split_once("__")?.0.parse().ok()?;
            name.ends_with(".sql").then_some((version, path))
        })
        .collect();
    files.sort();
    files
}

/// Applies every migration in `dir` in version order (re-applying is safe: migrations are
/// idempotent; this helper does not record versions, `processor migrate` does).
pub async fn apply_migrations(client: &mut Client, dir: &Path) {
    let files = migration_files(dir);
    assert!(
        !files.is_empty(),
        "no V<N>__*.sql migrations in {}",
        dir.display()
    );
    // Like `processor migrate`, each file is applied once and recorded: a later migration may
    // change what an earlier one set up (V5 replaces V2's refresh policies), so running V2 again
    // on top of V5 is not a no-op.
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS e2e_applied_migrations (file TEXT PRIMARY KEY)")
        .await
        .unwrap_or_else(|e| panic!("cannot create the migration record: {e}"));
    for (_, path) in files {
        let file = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let applied = client
            .query_opt(
                "SELECT 1 FROM e2e_applied_migrations WHERE file = $1",
                &[&file],
            )
            .await
            .unwrap_or_else(|e| panic!("cannot read the migration record: {e}"))
            .is_some();
        if applied {
            continue;
        }
        run_sql_file(client, &path).await;
        client
            .execute(
                "INSERT INTO e2e_applied_migrations (file) VALUES ($1)",
                &[&file],
            )
            .await
            .unwrap_or_else(|e| panic!("cannot record {file}: {e}"));
    }
}

/// Runs a SQL file: in one transaction, or, when its first line is [`NO_TRANSACTION_MARKER`],
/// statement by statement outside a transaction (a multi-statement simple query would be one
/// implicit transaction).
pub async fn run_sql_file(client: &mut Client, path: &Path) {
    let sql = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let fail = |e: tokio_postgres::Error| -> ! {
        let detail = e
            .as_db_error()
            .map(|d| format!("{}: {} ({:?})", d.code().code(), d.message(), d.detail()))
            .unwrap_or_else(|| e.to_string());
        panic!("{}: {detail}", path.display())
    };
    if sql.lines().next().map(str::trim_end) == Some(NO_TRANSACTION_MARKER) {
        for statement in split_statements(&sql) {
            client
                .batch_execute(statement)
                .await
                .unwrap_or_else(|e| fail(e));
        }
    } else {
        let tx = client.transaction().await.unwrap_or_else(|e| fail(e));
        tx.batch_execute(&sql).await.unwrap_or_else(|e| fail(e));
        tx.commit().await.unwrap_or_else(|e| fail(e));
    }
}

/// Splits a no-transaction file at `;` + line break (the sql/README.md rule), dropping pieces
/// that hold only comments and whitespace.
fn split_statements(sql: &str) -> Vec<&str> {
    sql.split_inclusive(";\n")
        .filter(|s| {
            s.lines().any(|l| {
                let l = l.trim();
                !l.is_empty() && !l.starts_with("--")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ready_line() {
        let log = "2025-01-01T00:00:00Z pglite-tcp listening on 127.0.0.1:40123 dataDir=/x\n";
        assert_eq!(parse_port(log), Some(40123));
    }

    #[test]
    fn splits_statements_and_drops_comment_only_pieces() {
        let sql = "-- tokenledger:no-transaction\n-- why\nSELECT 1;\n\nCALL x(\n 'a;b');\n-- end\n";
        assert_eq!(
            split_statements(sql),
            vec![
                "-- tokenledger:no-transaction\n-- why\nSELECT 1;\n",
                "\nCALL x(\n 'a;b');\n"
            ]
        );
    }
}
