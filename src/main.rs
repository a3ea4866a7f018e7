//! The `dilated` command-line tool; the commands are in [`cli`].

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The executor's fallback warnings are printed by the commands themselves, once.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,dilated::plan::executor=error"),
    )
    .init();
    match cli::execute(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
