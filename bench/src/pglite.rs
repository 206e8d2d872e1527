//! PGlite + TimescaleDB (`tools/pglite/server.mjs` under node) as the
//! benchmark's database, on request (`--pglite`): the demo's embedded
//! database, one WASM backend serving one transaction at a time.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use e2e::ChildProcess;
use tempfile::TempDir;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const READY_LINE: &str = "pglite-tcp listening on 127.0.0.1:";

/// A running PGlite server; its data directory goes with it.
#[derive(Debug)]
pub struct PgliteDatabase {
    pub process: ChildProcess,
    port: u16,
    _data_dir: TempDir,
}

impl PgliteDatabase {
    /// Starts server.mjs on a port of its choosing (PORT=0; the port comes
    /// from its ready line). Needs `TOKENLEDGER_PGLITE_SERVER` and
    /// `TOKENLEDGER_NODE_BIN` (scripts/services.sh env).
    pub async fn start() -> anyhow::Result<PgliteDatabase> {
        let path = |var: &str| -> anyhow::Result<PathBuf> {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .with_context(|| format!("{var} is not set: run scripts/bench.sh"))
        };
        let server = path("TOKENLEDGER_PGLITE_SERVER")?;
        let node = path("TOKENLEDGER_NODE_BIN")?;
        let data_dir = tempfile::Builder::new()
            .prefix("tokenledger-bench-pglite-")
            .tempdir()
            .context("creating PGlite's data directory")?;
        let data = data_dir.path().to_string_lossy().into_owned();
        let mut process = ChildProcess::spawn(
            "pglite",
            node,
            &[server],
            &[("PORT", "0"), ("DATA_DIR", &data)],
        );
        let log = process.wait_for_log(READY_LINE, READY_TIMEOUT).await;
        let port = log
            .find(READY_LINE)
            .map(|at| &log[at + READY_LINE.len()..])
            .and_then(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .with_context(|| format!("no port in PGlite's ready line; log:\n{log}"))?;
        Ok(PgliteDatabase {
            process,
            port,
            _data_dir: data_dir,
        })
    }

    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    pub async fn stop(mut self) {
        self.process.shutdown(Duration::from_secs(10)).await;
    }
}
