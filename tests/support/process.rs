//! Child processes of a test: output captured to a log file that is shown when something went
//! wrong, signals for crash and shutdown tests, and no process left behind.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::NamedTempFile;

/// How much of a log is shown when a test fails.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// A running child process whose stdout and stderr go to one log file.
///
/// Drop kills the process (SIGKILL) if it still runs, and prints its log when the test is
/// panicking or the process had exited unsuccessfully; otherwise the log file is removed.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: std::process::Child,
    log: NamedTempFile,
    status: Option<ExitStatus>,
    /// An exit this test caused on purpose (kill9, sigterm) is not a failure worth a log dump.
    expected_exit: bool,
}

impl ChildProcess {
    /// Spawns `program args...` with `envs` added to the environment.
    pub fn spawn<S: AsRef<OsStr>>(
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
        envs: &[(&str, &str)],
    ) -> ChildProcess {
        let mut cmd = Command::new(program);
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self::spawn_command(name, cmd)
    }

    /// Spawns a prepared command; stdin is closed, stdout and stderr go to the log file.
    ///
    /// `TOKENLEDGER_*` variables of the test process (the harness's service paths) are not
    /// inherited: tokenledger's binaries read `TOKENLEDGER_…` as configuration and reject what
    /// they do not know. Variables set on `cmd` itself are kept.
    pub fn spawn_command(name: &str, mut cmd: Command) -> ChildProcess {
        let explicit: Vec<String> = cmd
            .get_envs()
            .filter_map(|(k, _)| k.to_str().map(str::to_owned))
            .collect();
        for (k, _) in std::env::vars_os() {
            if let Some(k) = k.to_str() {
                if k.starts_with("TOKENLEDGER_") && !explicit.iter().any(|e| e == k) {
                    cmd.env_remove(k);
                }
            }
        }
        let log = tempfile::Builder::new()
            .prefix(&format!("tokenledger-e2e-{name}-"))
            .suffix(".log")
            .tempfile()
            .unwrap_or_else(|e| panic!("{name}: cannot create a log file: {e}"));
        let out = log
            .reopen()
            .unwrap_or_else(|e| panic!("{name}: cannot open {}: {e}", log.path().display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("{name}: cannot dup the log file: {e}"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot spawn {:?}: {e}", cmd.get_program()));
        register_pid(child.id(), name);
        ChildProcess {
            name: name.to_owned(),
            child,
            log,
            status: None,
            expected_exit: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// Everything the process wrote so far.
    pub fn log_contents(&self) -> String {
        std::fs::read(self.log.path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `LOG_TAIL_BYTES` of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let Ok(mut f) = File::open(self.log.path()) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The exit status, if the process has exited (does not block).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Panics with the log tail if the process is no longer running.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_status() {
            panic!(
                "{} exited unexpectedly ({status}); log {}:\n{}",
                self.name,
                self.log_path().display(),
                self.log_tail()
            );
        }
    }

    /// SIGKILL, then reap: a crash that leaves no chance to clean up.
    pub fn kill9(&mut self) {
        self.expected_exit = true;
        if self.is_running() {
            let _ = self.child.kill();
        }
        self.status = self.child.wait().ok();
    }

    /// SIGTERM: asks for a graceful shutdown; pair with [`ChildProcess::wait_exit`].
    pub fn sigterm(&mut self) {
        self.signal(Signal::SIGTERM);
    }

    /// Sends `signal` if the process still runs.
    pub fn signal(&mut self, signal: Signal) {
        self.expected_exit = true;
        if self.is_running() {
            let pid = i32::try_from(self.child.id()).unwrap_or(i32::MAX);
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Waits up to `timeout` for the process to exit and returns its status, or None if it still
    /// runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Returns the status.
    pub async fn shutdown(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.sigterm();
        if let Some(status) = self.wait_exit(grace).await {
            return Some(status);
        }
        self.kill9();
        self.status
    }

    /// Waits up to `timeout` for `needle` to appear in the log; panics with the log tail if the
    /// process exits first or the time runs out. Returns the whole log at that point.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let log = self.log_contents();
            if log.contains(needle) {
                return log;
            }
            if let Some(status) = self.try_status() {
                panic!(
                    "{} exited ({status}) before logging {needle:?}; log {}:\n{}",
                    self.name,
                    self.log_path().display(),
                    self.log_tail()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{} did not log {needle:?} within {timeout:?}; log {}:\n{}",
                    self.name,
                    self.log_path().display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let exited_badly = match self.try_status() {
            Some(status) => !status.success() && !self.expected_exit,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                false
            }
        };
        unregister_pid(self.child.id());
        if std::thread::panicking() || exited_badly {
            eprintln!(
                "----- {} (pid {}) log, last {} KiB -----\n{}\n----- end of {} log -----",
                self.name,
                self.child.id(),
                LOG_TAIL_BYTES / 1024,
                self.log_tail(),
                self.name
            );
        }
    }
}

/// scripts/test.sh sets this to a directory where every spawned process leaves a `<pid>` file
/// until it is reaped, so the script can kill what a killed test run left behind, and nothing
/// else.
const PID_DIR_VAR: &str = "TOKENLEDGER_E2E_PID_DIR";

fn register_pid(pid: u32, name: &str) {
    if let Some(dir) = std::env::var_os(PID_DIR_VAR).filter(|d| !d.is_empty()) {
        let _ = std::fs::write(Path::new(&dir).join(pid.to_string()), name);
    }
}

fn unregister_pid(pid: u32) {
    if let Some(dir) = std::env::var_os(PID_DIR_VAR).filter(|d| !d.is_empty()) {
        let _ = std::fs::remove_file(Path::new(&dir).join(pid.to_string()));
    }
}
