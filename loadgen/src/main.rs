//! `ringmq-loadgen`: parse the command line, run the scenario (or draw a plot), print the
//! summary, write the results folder. Everything else lives in the library.

use clap::Parser;
use ringmq_loadgen::cli::{Cli, Command};
use ringmq_loadgen::run::{human_summary, plot, run, write_outputs};

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Plot { out, title, runs } => plot(out, title, runs),
        command => run(command, &argv).and_then(|report| {
            print!("{}", human_summary(&report.summary));
            let out = match command {
                Command::Conn { common, .. }
                | Command::Handshake { common, .. }
                | Command::Pairs { common, .. }
                | Command::Fanout { common, .. }
                | Command::Fanin { common, .. } => common.out.as_ref(),
                Command::Plot { .. } => None,
            };
            match out {
                Some(dir) => write_outputs(dir, &report),
                None => Ok(()),
            }
        }),
    };
    if let Err(e) = result {
        eprintln!("ringmq-loadgen: {e}");
        std::process::exit(1);
    }
}
