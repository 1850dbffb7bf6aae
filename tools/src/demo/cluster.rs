//! A cluster of `flotilla start` processes on loopback, for the demo: it
//! makes a CA and certificates, writes each node's settings file, starts
//! the processes (logs in `DIR/node-N.log`), reads their `/status`, kills
//! one with SIGKILL, and stops the rest with SIGTERM.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla::client::QuicCaller;
use flotilla_transport::tls::{self, TlsFiles};
use flotilla_transport::NodeId;

use crate::start::status::StatusReport;

/// The name of the demo's client certificate.
const CLIENT_NAME: &str = "demo";
/// How long a node may take to answer its first `/status`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// One node process.
#[derive(Debug)]
struct Process {
    child: Option<Child>,
    listen: SocketAddr,
    status: SocketAddr,
    log: PathBuf,
}

/// The running cluster. Dropping it kills whatever still runs.
#[derive(Debug)]
pub struct ProcessCluster {
    dir: PathBuf,
    certs: PathBuf,
    nodes: BTreeMap<NodeId, Process>,
}

/// Settings of [`ProcessCluster::start`].
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub nodes: u64,
    pub ranges: u64,
    pub tick_ms: u64,
    /// Raft workers per node; the engine's default if `None`.
    pub workers: Option<usize>,
}

/// A free port on loopback, as the kernel picks it. Another process could
/// take it before the node binds it; on a test machine's loopback that
/// does not happen in practice, and a node that cannot bind says so.
fn free_udp_port() -> Result<u16, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("no free UDP port: {e}"))?;
    socket
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn free_tcp_port() -> Result<u16, String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free TCP port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

impl ProcessCluster {
    /// Makes certificates and settings in `dir` and starts `settings.nodes`
    /// processes of `exe` (the `flotilla` binary).
    pub fn start(exe: &Path, dir: &Path, settings: &ClusterSettings) -> Result<Self, String> {
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).map_err(|e| format!("{}: {e}", certs.display()))?;
        tls::init_ca(&certs).map_err(|e| e.to_string())?;
        tls::issue_client_cert(&certs, CLIENT_NAME).map_err(|e| e.to_string())?;
        let mut nodes = BTreeMap::new();
        for id in 1..=settings.nodes {
            tls::issue_node_cert(&certs, id, &["127.0.0.1".to_string()])
                .map_err(|e| e.to_string())?;
            let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
            let status = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
            nodes.insert(
                id,
                Process {
                    child: None,
                    listen,
                    status,
                    log: dir.join(format!("node-{id}.log")),
                },
            );
        }
        let peers: Vec<String> = nodes
            .iter()
            .map(|(id, p)| format!("\"{id}={}\"", p.listen))
            .collect();
        let mut cluster = ProcessCluster {
            dir: dir.to_path_buf(),
            certs,
            nodes,
        };
        for (&id, process) in &mut cluster.nodes {
            let files = TlsFiles::node(&cluster.certs, id);
            let workers = settings
                .workers
                .map(|w| format!("workers = {w}\n"))
                .unwrap_or_default();
            let config = format!(
                "id = {id}\nlisten = \"{}\"\npeers = [{}]\ndata_dir = \"{}\"\nca = \"{}\"\n\
                 cert = \"{}\"\nkey = \"{}\"\nstatus = \"{}\"\ntick_ms = {}\nranges = {}\n{workers}",
                process.listen,
                peers.join(", "),
                dir.join(format!("node-{id}")).display(),
                files.ca_cert.display(),
                files.cert.display(),
                files.key.display(),
                process.status,
                settings.tick_ms,
                settings.ranges,
            );
            let path = dir.join(format!("node-{id}.toml"));
            std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
            let log = std::fs::File::create(&process.log)
                .map_err(|e| format!("{}: {e}", process.log.display()))?;
            let err = log.try_clone().map_err(|e| e.to_string())?;
            let child = Command::new(exe)
                .arg("start")
                .arg("--config")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("starting node {id} ({}): {e}", exe.display()))?;
            process.child = Some(child);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for &id in cluster.nodes.keys() {
            loop {
                match cluster.status(id) {
                    Ok(_) => break,
                    Err(error) if Instant::now() > deadline => {
                        return Err(format!(
                            "node {id} did not answer /status within {START_TIMEOUT:?}: {error}; \
                             its log: {}",
                            cluster.log_tail(id)
                        ))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Ok(cluster)
    }

    /// Where the cluster keeps its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The nodes started, dead or alive.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The nodes still running.
    pub fn alive(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, p)| p.child.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    /// The operating system's id of node `id`'s process.
    pub fn pid(&self, id: NodeId) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref().map(Child::id)
    }

    /// Node `id`'s `/status`.
    pub fn status(&self, id: NodeId) -> Result<StatusReport, String> {
        let process = self.nodes.get(&id).ok_or(format!("no node {id}"))?;
        let body = http_get(process.status, "/status")?;
        serde_json::from_str(&body).map_err(|e| format!("node {id}'s /status: {e}: {body}"))
    }

    /// The sum of `/status` leaders over the nodes still running.
    pub fn leaders(&self) -> Result<usize, String> {
        self.alive()
            .into_iter()
            .map(|id| self.status(id).map(|s| s.leaders))
            .sum()
    }

    /// One QUIC caller per node, with the demo's client certificate, for
    /// [`flotilla::client::RemoteDb`]s.
    pub fn callers(&self) -> super::Callers {
        let files = TlsFiles::client(&self.certs, CLIENT_NAME);
        self.nodes
            .iter()
            .map(|(&id, p)| {
                let caller: Arc<dyn flotilla::client::Caller> =
                    Arc::new(QuicCaller::new(id, p.listen, files.clone()));
                (id, caller)
            })
            .collect()
    }

    /// Kills node `id` with SIGKILL: no shutdown, unsynced data lost.
    pub fn kill(&mut self, id: NodeId) -> Result<(), String> {
        let process = self.nodes.get_mut(&id).ok_or(format!("no node {id}"))?;
        if let Some(mut child) = process.child.take() {
            child
                .kill()
                .map_err(|e| format!("killing node {id}: {e}"))?;
            let _ = child.wait();
        }
        Ok(())
    }

    /// Stops every node with SIGTERM, waiting for each to exit (killing
    /// one that takes too long). Returns the nodes that did not exit
    /// cleanly on their own.
    pub fn stop(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for process in self.nodes.values() {
            let Some(child) = process.child.as_ref() else {
                continue;
            };
            let pid = child.id() as libc::pid_t;
            // SAFETY: sending a signal to a child process this cluster
            // started and has not reaped; kill(2) touches no memory.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        for (&id, process) in &mut self.nodes {
            let Some(mut child) = process.child.take() else {
                continue;
            };
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => break,
                    Ok(Some(status)) => {
                        problems.push(format!("node {id} exited with {status}"));
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        problems.push(format!("node {id} did not stop within {STOP_TIMEOUT:?}"));
                        break;
                    }
                }
            }
        }
        problems
    }

    /// The last lines of node `id`'s log.
    pub fn log_tail(&self, id: NodeId) -> String {
        let Some(process) = self.nodes.get(&id) else {
            return String::new();
        };
        let text = std::fs::read_to_string(&process.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for process in self.nodes.values_mut() {
            if let Some(mut child) = process.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// CPU time (user + system) process `pid` has used, from /proc.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system; it touches no memory.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
    Some(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}

/// A minimal HTTP/1.1 GET: the status server is local and plain.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("{addr}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or(format!("{addr}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "{addr}{path}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.to_string())
}
