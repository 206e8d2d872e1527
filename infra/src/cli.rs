//! The command-line flags both binaries take, flattened into each one's
//! clap parser: where the configuration is, printing it, the log format.

use std::path::PathBuf;

use crate::logging::LogFormat;

#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file (default: $TOKENLEDGER_CONFIG).
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as TOML (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}
