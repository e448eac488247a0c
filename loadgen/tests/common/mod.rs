//! Helpers shared by the integration tests: run the load generator in-process from an argv.

use ringmq_loadgen::cli::Cli;
use ringmq_loadgen::run::{run, Report};

use clap::Parser;

/// Runs `ringmq-loadgen ARGS` in this process and returns its figures.
pub fn loadgen(args: &[&str]) -> Report {
    let argv: Vec<String> = std::iter::once("ringmq-loadgen")
        .chain(args.iter().copied())
        .map(str::to_string)
        .collect();
    let cli = Cli::try_parse_from(&argv).expect("valid arguments");
    run(&cli.command, &argv).expect("the run completes")
}
