//! `flotilla cert`: the cluster's certificate authority and the
//! certificates of its nodes and clients (see
//! [`flotilla_transport::tls`] for what they hold and how they are
//! checked).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use flotilla_transport::tls;

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create the cluster CA (`DIR/ca.crt`, `DIR/ca.key`); refuses to
    /// overwrite one.
    Init {
        /// Where the CA and the certificates it issues live.
        dir: PathBuf,
    },
    /// Issue node N's certificate (`DIR/node-N.crt`, `DIR/node-N.key`).
    Node {
        dir: PathBuf,
        /// The node id the certificate binds.
        #[arg(long)]
        id: u64,
        /// Host names or IP addresses the node is reached at (repeatable).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
    /// Issue a client certificate (`DIR/client-NAME.crt`, `.key`).
    Client {
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
}

/// Runs a `flotilla cert` command, printing what it wrote.
pub fn run(command: &CertCommand) -> ExitCode {
    let result = match command {
        CertCommand::Init { dir } => tls::init_ca(dir).map(|()| {
            format!(
                "created the cluster CA in {} (keep ca.key private)",
                dir.display()
            )
        }),
        CertCommand::Node { dir, id, hosts } => {
            tls::issue_node_cert(dir, *id, hosts).map(|files| {
                format!(
                    "node {id}: {} and {}",
                    files.cert.display(),
                    files.key.display()
                )
            })
        }
        CertCommand::Client { dir, name } => tls::issue_client_cert(dir, name).map(|files| {
            format!(
                "client {name}: {} and {}",
                files.cert.display(),
                files.key.display()
            )
        }),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("flotilla cert: {error}");
            ExitCode::FAILURE
        }
    }
}
