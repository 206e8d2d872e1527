//! Locating the workspace's own binaries (gateway, processor, ...) that the tests run.

use std::path::PathBuf;

/// A binary built by `cargo build --workspace --bins`.
#[derive(Debug)]
pub struct Binary;

impl Binary {
    /// The path of the workspace binary `name`: in `$TOKENLEDGER_BIN_DIR` when set, otherwise in
    /// the profile directory of the running test executable (`target/<profile>/deps/e2e-…` →
    /// `target/<profile>/`), where cargo puts the workspace's binaries.
    pub fn path(name: &str) -> PathBuf {
        let dir = match std::env::var_os("TOKENLEDGER_BIN_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let exe = std::env::current_exe()
                    .unwrap_or_else(|e| panic!("cannot locate the test executable: {e}"));
                exe.parent()
                    .and_then(|deps| deps.parent())
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        panic!("test executable {} has no grandparent", exe.display())
                    })
            }
        };
        let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        if !path.is_file() {
            panic!(
                "binary {name:?} not found at {}: run cargo build --workspace --bins \
                 (scripts/test.sh does), or point TOKENLEDGER_BIN_DIR at the directory holding it",
                path.display()
            );
        }
        path
    }
}
