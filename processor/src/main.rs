//! The `processor` binary: parses the command line, starts logging and the async runtime, and
//! hands the subcommand to [`processor::cli::dispatch`].

// Both binaries allocate and free several small strings per event; glibc's
// malloc spent a sixth of the processor's time consolidating and unlinking
// chunks under load, mimalloc's thread-local free lists avoid that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;
use processor::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = infra::logging::init(cli.common.log_format) {
        eprintln!("processor: {error}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("processor: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("processor: {error:#}");
            if error.is::<processor::reconcile::OutOfBounds>() {
                // Told apart from a failure to run, for cron and alerting.
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}
