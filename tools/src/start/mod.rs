//! `flotilla start`, the command that runs one node of a cluster
//! ([`run`]), and its pieces: its settings ([`config`]), its status HTTP
//! server ([`status`]), and the signals that stop it
//! ([`shutdown_signal`]).

pub mod config;
pub mod run;
pub mod status;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Which signal asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// SIGINT: Ctrl-C in a terminal.
    Interrupt,
    /// SIGTERM: what service managers and `kill` send.
    Terminate,
}

/// The stop signals, listened for from the moment they are installed: a
/// signal that arrives after [`ShutdownSignals::install`] and before
/// [`ShutdownSignals::wait`] is not lost. Installed, they replace the
/// default action (ending the process at once) for the whole process, so
/// that the node can stop in order: stop taking requests, finish or fail
/// what is in flight, let the workers exit.
#[derive(Debug)]
pub struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignals {
    /// Starts listening for SIGINT and SIGTERM. Needs a tokio runtime with
    /// IO enabled.
    pub fn install() -> std::io::Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves at the first SIGINT or SIGTERM.
    pub async fn wait(mut self) -> ShutdownSignal {
        tokio::select! {
            _ = self.interrupt.recv() => ShutdownSignal::Interrupt,
            _ = self.terminate.recv() => ShutdownSignal::Terminate,
        }
    }
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM after it is first
/// polled; fails only if the signals cannot be listened for. Use
/// [`ShutdownSignals::install`] to listen from an earlier point.
pub async fn shutdown_signal() -> std::io::Result<ShutdownSignal> {
    Ok(ShutdownSignals::install()?.wait().await)
}

/// Runs `flotilla start`: loads the settings (a bad one is reported by
/// name), then the node until a stop signal. Logs go to standard error
/// (`RUST_LOG` filters them; `info` by default).
pub fn cli(args: &config::StartArgs) -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let settings = match config::load(args.config.as_deref(), args) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("flotilla start: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = run::run(settings, |settings, status| {
        let status = status.map_or_else(|| "off".to_string(), |a| a.to_string());
        println!(
            "flotilla: node {} serving on {} (QUIC), status on {status}, data in {}",
            settings.id,
            settings.listen,
            settings.data_dir.display()
        );
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flotilla start: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
