//! `tarn`: the command line for Tarn pools and volumes (zpool(8)/zfs(8) style).
//!
//! Every command opens the pools it needs by path from the registry under `$TARN_HOME`,
//! holding each exclusively while it runs. Output is for humans by default and JSON with
//! `--json`; errors are one line on stderr (`tarn: <message>`) and a non-zero exit status.

/// `eprintln!` that cannot panic: with stderr closed (`2>&1 | true`) `eprintln!` panics, and
/// killed the thread that stops the guest on SIGINT/SIGTERM, or turned a clean exit into 101.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod cli;
mod commands;
mod error;
mod output;
mod registry;
mod signals;
mod terminal;

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;

/// Warnings and errors, but none from `virtio_queue`: everything it logs is about values a
/// guest wrote (ring addresses, descriptor indices), which a hostile guest can repeat without
/// end; the VMM reports those itself, rate-limited. `TARN_LOG` overrides this.
const DEFAULT_LOG: &str = "warn,virtio_queue=off";

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TARN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .try_init();
}

/// Help and version go to stdout (exit 0); usage errors become one `tarn:` line (exit 2).
fn usage_exit(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            let text = e.render().to_string();
            let first = text.split("\n\n").next().unwrap_or(&text);
            let first = first.strip_prefix("error: ").unwrap_or(first);
            let line = first.split_whitespace().collect::<Vec<_>>().join(" ");
            say!("tarn: {line} (see `tarn --help`)");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    init_tracing();
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_exit(e),
    };
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::debug!(error = ?e, "command failed");
            say!("tarn: {}", e.one_line());
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
