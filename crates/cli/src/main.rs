//! `hiber`: the command-line front of hiber.

#[macro_use]
mod output;
mod attach;
mod cli;
mod commands;
mod format;
mod peers;

use clap::Parser;

/// Exit code for hiber's own failures (a command's own codes pass through).
const FAILURE: i32 = 125;

fn main() {
    let cli = cli::Cli::parse();
    let code = match commands::dispatch(cli) {
        Ok(code) => code,
        Err(error) if output::is_closed(&error) => output::CLOSED_STATUS,
        Err(error) => {
            // One line: the error and its causes.
            let line = format!("{error:#}").replace('\n', " ");
            eprintln!("hiber: {line}");
            FAILURE
        }
    };
    std::process::exit(code);
}
