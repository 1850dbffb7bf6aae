//! `flotilla start` stops in order on SIGTERM or SIGINT. This file is its
//! own test process: the signals sent here reach no other test.

use std::time::Duration;

use flotilla_tools::start::{ShutdownSignal, ShutdownSignals};

fn send_to_self(signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} failed");
}

async fn wait(signals: ShutdownSignals) -> ShutdownSignal {
    tokio::time::timeout(Duration::from_secs(10), signals.wait())
        .await
        .expect("the signal arrives within 10 s")
}

#[tokio::test]
async fn sigterm_and_sigint_resolve_the_shutdown_signal() {
    // One test, in sequence: each signal reaches every listener installed.
    let signals = ShutdownSignals::install().expect("listen for signals");
    send_to_self("TERM");
    assert_eq!(wait(signals).await, ShutdownSignal::Terminate);
    let signals = ShutdownSignals::install().expect("listen for signals");
    send_to_self("INT");
    assert_eq!(wait(signals).await, ShutdownSignal::Interrupt);
}
