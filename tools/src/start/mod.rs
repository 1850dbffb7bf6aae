//! The pieces of `flotilla start`, the command that runs one node of a
//! cluster: its settings ([`config`]), its status HTTP server ([`status`]),
//! and the signals that stop it ([`shutdown_signal`]).

pub mod config;
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
