//! The settings of `flotilla start`: a TOML file, each of whose keys is
//! also a flag that overrides it, checked as a whole before the node opens
//! so that a mistake is reported by name rather than discovered later.
//!
//! ```toml
//! id = 1
//! listen = "10.0.0.1:7000"          # QUIC, for peers and clients
//! peers = ["1=10.0.0.1:7000", "2=10.0.0.2:7000", "3=10.0.0.3:7000"]
//! data_dir = "/var/lib/flotilla"
//! ca = "certs/ca.pem"               # the cluster's CA certificate
//! cert = "certs/node-1.pem"         # this node's certificate, signed by the CA
//! key = "certs/node-1.key"
//! status = "127.0.0.1:8080"         # HTTP: /status and /metrics (optional)
//! tick_ms = 20
//! election_ticks = 10
//! heartbeat_ticks = 2
//! ranges = 64
//! workers = 4                       # default: the cores, at most 8
//! ```
//!
//! - **Keys.** Unknown keys are an error (a misspelt key silently ignored
//!   would leave a default in force). Flags are the keys with dashes:
//!   `--data-dir`, `--tick-ms`, …; `--peer ID=ADDR` repeats (or takes a
//!   comma-separated list) and, when given, replaces the file's `peers`.
//! - **Paths** in the file are relative to the file's directory, so a
//!   settings file and its certificates move together; paths in flags are
//!   relative to the working directory.
//! - **Peers** list the cluster's nodes. This node may be listed (at its
//!   `listen` address) or not; either way it is a member. With no peers it
//!   is a cluster of one. Every node must be started with the same node
//!   list and `ranges`: together they are the bootstrap layout.
//!
//! There is no `join` setting: the transport's peer list is fixed when a
//! node starts, so a node cannot yet join a running cluster by address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla::node::NodeConfig;
use flotilla::runtime::WORKERS_MAX;
use flotilla::{Bootstrap, NodeOptions};
use flotilla_transport::NodeId;
use serde::Deserialize;

/// Bounds of `tick_ms`: below 1 ms ticks are not a timer's resolution;
/// above 10 s an election takes minutes.
pub const TICK_MS_MIN: u64 = 1;
pub const TICK_MS_MAX: u64 = 10_000;
/// Upper bound of `heartbeat_ticks`.
pub const HEARTBEAT_TICKS_MAX: u64 = 100;
/// Upper bound of `election_ticks`.
pub const ELECTION_TICKS_MAX: u64 = 1_000;
/// Upper bound of `ranges` (what [`Bootstrap::EvenSplits`] accepts).
pub const RANGES_MAX: u64 = 65_536;
/// Ranges at bootstrap unless set.
pub const RANGES_DEFAULT: u64 = 64;

/// The flags of `flotilla start`. Each overrides the file's key of the
/// same name.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StartArgs {
    /// A TOML settings file; flags override its keys.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id: > 0 and distinct in the cluster.
    #[arg(long)]
    pub id: Option<u64>,
    /// The address (IP:PORT) to accept QUIC connections from peers and
    /// clients on.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// A node of the cluster as ID=ADDR; repeat it or separate with commas.
    /// Replaces the file's `peers`.
    #[arg(long = "peer", value_name = "ID=ADDR", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Where the node keeps its WAL and snapshots.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The cluster CA's certificate (PEM): peers must present a
    /// certificate it signed.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the CA.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The address (IP:PORT) of the HTTP status server (/status,
    /// /metrics); none if unset.
    #[arg(long, value_name = "ADDR")]
    pub status: Option<String>,
    /// Milliseconds per Raft tick.
    #[arg(long, value_name = "MS")]
    pub tick_ms: Option<u64>,
    /// Ticks without a leader before a follower campaigns.
    #[arg(long, value_name = "TICKS")]
    pub election_ticks: Option<u64>,
    /// Ticks between a leader's heartbeats.
    #[arg(long, value_name = "TICKS")]
    pub heartbeat_ticks: Option<u64>,
    /// Ranges (Raft groups) the key space is split into at bootstrap.
    #[arg(long, value_name = "COUNT")]
    pub ranges: Option<u64>,
    /// Raft worker threads (default: the cores, at most 8).
    #[arg(long, value_name = "COUNT")]
    pub workers: Option<usize>,
}

/// The settings file as written: every key optional, none unknown.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    id: Option<u64>,
    listen: Option<String>,
    peers: Option<Vec<String>>,
    data_dir: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    status: Option<String>,
    tick_ms: Option<u64>,
    election_ticks: Option<u64>,
    heartbeat_ticks: Option<u64>,
    ranges: Option<u64>,
    workers: Option<usize>,
}

/// The certificate files of mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// Checked settings of `flotilla start`; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub id: NodeId,
    pub listen: SocketAddr,
    /// The other nodes of the cluster, by id (this node is not in it).
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub data_dir: PathBuf,
    pub tls: TlsFiles,
    /// The HTTP status server's address, if it runs.
    pub status: Option<SocketAddr>,
    pub tick_ms: u64,
    pub election_ticks: u64,
    pub heartbeat_ticks: u64,
    /// Ranges at bootstrap.
    pub ranges: u64,
    /// Raft worker threads; the engine's default if `None`.
    pub workers: Option<usize>,
}

/// Why the settings are unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The settings file could not be read.
    #[error("cannot read the settings file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The settings file is not valid TOML of the schema (a syntax error,
    /// an unknown key, a value of the wrong type); the message says where.
    #[error("settings file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A setting is missing or wrong.
    #[error("{setting}: {problem}")]
    Invalid {
        /// The key (flag `--` plus the key with dashes).
        setting: &'static str,
        problem: String,
    },
}

fn invalid(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        problem: problem.into(),
    }
}

/// Loads the settings from `file` (if any), overrides them with the flags
/// in `overrides`, and checks them.
pub fn load(file: Option<&Path>, overrides: &StartArgs) -> Result<Settings, ConfigError> {
    let from_file = match file {
        Some(path) => read_file(path)?,
        None => FileSettings::default(),
    };
    merge(from_file, overrides).check()
}

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut settings: FileSettings = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    for relative in [
        &mut settings.data_dir,
        &mut settings.ca,
        &mut settings.cert,
        &mut settings.key,
    ]
    .into_iter()
    .flatten()
    {
        if relative.is_relative() {
            *relative = base.join(&*relative);
        }
    }
    Ok(settings)
}

fn merge(file: FileSettings, flags: &StartArgs) -> FileSettings {
    FileSettings {
        id: flags.id.or(file.id),
        listen: flags.listen.clone().or(file.listen),
        peers: if flags.peers.is_empty() {
            file.peers
        } else {
            Some(flags.peers.clone())
        },
        data_dir: flags.data_dir.clone().or(file.data_dir),
        ca: flags.ca.clone().or(file.ca),
        cert: flags.cert.clone().or(file.cert),
        key: flags.key.clone().or(file.key),
        status: flags.status.clone().or(file.status),
        tick_ms: flags.tick_ms.or(file.tick_ms),
        election_ticks: flags.election_ticks.or(file.election_ticks),
        heartbeat_ticks: flags.heartbeat_ticks.or(file.heartbeat_ticks),
        ranges: flags.ranges.or(file.ranges),
        workers: flags.workers.or(file.workers),
    }
}

fn required<T>(value: Option<T>, setting: &'static str, what: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| {
        invalid(
            setting,
            format!(
                "not set; {what} (`{setting} = …` in the file or --{})",
                setting.replace('_', "-")
            ),
        )
    })
}

fn socket_address(setting: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        invalid(
            setting,
            format!("{text:?} is not a socket address (IP:PORT, e.g. 10.0.0.1:7000)"),
        )
    })
}

fn in_bounds(setting: &'static str, value: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            setting,
            format!("{value} is out of bounds: must be between {min} and {max}"),
        ));
    }
    Ok(value)
}

fn existing_file(setting: &'static str, path: PathBuf) -> Result<PathBuf, ConfigError> {
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(path),
        Ok(_) => Err(invalid(
            setting,
            format!("{} is not a file", path.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(invalid(
            setting,
            format!("{} does not exist", path.display()),
        )),
        Err(e) => Err(invalid(setting, format!("{}: {e}", path.display()))),
    }
}

/// Parses `peers` entries (`ID=ADDR`) into the other nodes of the cluster.
fn parse_peers(
    entries: &[String],
    id: NodeId,
    listen: SocketAddr,
) -> Result<BTreeMap<NodeId, SocketAddr>, ConfigError> {
    let mut peers: BTreeMap<NodeId, SocketAddr> = BTreeMap::new();
    let mut by_address: BTreeMap<SocketAddr, NodeId> = BTreeMap::new();
    by_address.insert(listen, id);
    let mut listed_self = false;
    for entry in entries {
        let Some((node, address)) = entry.split_once('=') else {
            return Err(invalid(
                "peers",
                format!("{entry:?} is not ID=ADDR (e.g. 2=10.0.0.2:7000)"),
            ));
        };
        let node: NodeId = node.trim().parse().map_err(|_| {
            invalid(
                "peers",
                format!("{entry:?}: {:?} is not a node id", node.trim()),
            )
        })?;
        if node == 0 {
            return Err(invalid("peers", format!("{entry:?}: node ids must be > 0")));
        }
        let address: SocketAddr = address.trim().parse().map_err(|_| {
            invalid(
                "peers",
                format!(
                    "node {node}: {:?} is not a socket address (IP:PORT)",
                    address.trim()
                ),
            )
        })?;
        if node == id {
            if listed_self {
                return Err(invalid("peers", format!("node {node} is listed twice")));
            }
            if address != listen {
                return Err(invalid(
                    "peers",
                    format!(
                        "node {node} is this node, listed at {address} but listening on {listen}"
                    ),
                ));
            }
            listed_self = true;
            continue;
        }
        if peers.insert(node, address).is_some() {
            return Err(invalid("peers", format!("node {node} is listed twice")));
        }
        if let Some(other) = by_address.insert(address, node) {
            let (first, second) = (other.min(node), other.max(node));
            return Err(invalid(
                "peers",
                format!("nodes {first} and {second} have the same address {address}"),
            ));
        }
    }
    Ok(peers)
}

impl FileSettings {
    /// Checks the merged settings; the first problem found is the error.
    fn check(self) -> Result<Settings, ConfigError> {
        let id = required(self.id, "id", "give each node a distinct id > 0")?;
        if id == 0 {
            return Err(invalid("id", "must be > 0"));
        }
        let listen = required(
            self.listen,
            "listen",
            "the address to accept QUIC connections on",
        )?;
        let listen = socket_address("listen", &listen)?;
        let peers = parse_peers(&self.peers.unwrap_or_default(), id, listen)?;
        let data_dir = required(
            self.data_dir,
            "data_dir",
            "the directory for the WAL and snapshots",
        )?;
        if data_dir.exists() && !data_dir.is_dir() {
            return Err(invalid(
                "data_dir",
                format!("{} exists and is not a directory", data_dir.display()),
            ));
        }
        let tls_needed = "nodes authenticate each other with mutual TLS";
        let tls = TlsFiles {
            ca: existing_file("ca", required(self.ca, "ca", tls_needed)?)?,
            cert: existing_file("cert", required(self.cert, "cert", tls_needed)?)?,
            key: existing_file("key", required(self.key, "key", tls_needed)?)?,
        };
        let status = self
            .status
            .map(|text| socket_address("status", &text))
            .transpose()?;
        let engine = NodeConfig::default().raft;
        let tick_ms = in_bounds(
            "tick_ms",
            self.tick_ms.unwrap_or(TICK_MS_DEFAULT),
            TICK_MS_MIN,
            TICK_MS_MAX,
        )?;
        let heartbeat_ticks = in_bounds(
            "heartbeat_ticks",
            self.heartbeat_ticks.unwrap_or(engine.heartbeat_ticks),
            1,
            HEARTBEAT_TICKS_MAX,
        )?;
        let election_ticks = in_bounds(
            "election_ticks",
            self.election_ticks.unwrap_or(engine.election_ticks),
            2,
            ELECTION_TICKS_MAX,
        )?;
        if election_ticks <= heartbeat_ticks {
            return Err(invalid(
                "election_ticks",
                format!(
                    "{election_ticks} must be greater than heartbeat_ticks ({heartbeat_ticks}): \
                     followers would campaign between a live leader's heartbeats"
                ),
            ));
        }
        let ranges = in_bounds(
            "ranges",
            self.ranges.unwrap_or(RANGES_DEFAULT),
            1,
            RANGES_MAX,
        )?;
        let workers = self
            .workers
            .map(|w| in_bounds("workers", w as u64, 1, WORKERS_MAX as u64).map(|w| w as usize))
            .transpose()?;
        Ok(Settings {
            id,
            listen,
            peers,
            data_dir,
            tls,
            status,
            tick_ms,
            election_ticks,
            heartbeat_ticks,
            ranges,
            workers,
        })
    }
}

/// The engine's tick (`NodeOptions::new`'s default), unless set.
const TICK_MS_DEFAULT: u64 = 20;

impl Settings {
    /// Every node of the cluster, this one included, in id order.
    pub fn members(&self) -> Vec<NodeId> {
        let mut members: Vec<NodeId> = self.peers.keys().copied().collect();
        members.push(self.id);
        members.sort_unstable();
        members
    }

    /// The options to open the node with. The bootstrap layout is `ranges`
    /// even splits replicated on every member. A peer is declared down
    /// after `election_ticks` of silence, as the engine's defaults have it
    /// (10 and 10): a cluster given longer election timeouts for a slow
    /// network should not declare its peers down sooner than it would
    /// elect.
    pub fn node_options(&self) -> NodeOptions {
        let bootstrap = Bootstrap::EvenSplits {
            count: self.ranges,
            nodes: self.members(),
        };
        let mut options = NodeOptions::new(self.id, &self.data_dir, bootstrap);
        options.tick_interval = Duration::from_millis(self.tick_ms);
        if let Some(workers) = self.workers {
            options.workers = workers;
        }
        options.node.raft.election_ticks = self.election_ticks;
        options.node.raft.heartbeat_ticks = self.heartbeat_ticks;
        options.node.peer_down_after_ticks = self.election_ticks;
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A directory with the three certificate files.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("temporary directory");
            std::fs::create_dir(dir.path().join("certs")).expect("certs directory");
            for name in ["ca.pem", "node.pem", "node.key"] {
                std::fs::write(dir.path().join("certs").join(name), b"PEM").expect("cert file");
            }
            Fixture { dir }
        }

        /// Writes `settings.toml` with `text` and returns its path.
        fn file(&self, text: &str) -> PathBuf {
            let path = self.dir.path().join("settings.toml");
            std::fs::write(&path, text).expect("settings file");
            path
        }

        /// A complete file, plus `extra` lines.
        fn complete(&self, extra: &str) -> PathBuf {
            self.file(&format!(
                "id = 1\n\
                 listen = \"127.0.0.1:7001\"\n\
                 peers = [\"1=127.0.0.1:7001\", \"2=127.0.0.1:7002\", \"3=127.0.0.1:7003\"]\n\
                 data_dir = \"data\"\n\
                 ca = \"certs/ca.pem\"\n\
                 cert = \"certs/node.pem\"\n\
                 key = \"certs/node.key\"\n\
                 {extra}"
            ))
        }

        fn load(&self, extra: &str, flags: &[&str]) -> Result<Settings, ConfigError> {
            let path = self.complete(extra);
            load(Some(&path), &args(flags))
        }
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        start: StartArgs,
    }

    fn args(flags: &[&str]) -> StartArgs {
        Cli::try_parse_from(std::iter::once("flotilla").chain(flags.iter().copied()))
            .expect("flags parse")
            .start
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("a socket address")
    }

    /// The setting an error names, and its message.
    fn problem(result: Result<Settings, ConfigError>) -> (&'static str, String) {
        match result {
            Err(ConfigError::Invalid { setting, problem }) => (setting, problem),
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn a_complete_file_loads_with_defaults_and_paths_beside_it() {
        let fixture = Fixture::new();
        let settings = fixture
            .load("status = \"127.0.0.1:8080\"\n", &[])
            .expect("valid settings");
        let base = fixture.dir.path();
        assert_eq!(settings.id, 1);
        assert_eq!(settings.listen, addr("127.0.0.1:7001"));
        assert_eq!(
            settings.peers,
            BTreeMap::from([
                (2, "127.0.0.1:7002".parse().unwrap()),
                (3, "127.0.0.1:7003".parse().unwrap()),
            ])
        );
        assert_eq!(settings.data_dir, base.join("data"));
        assert_eq!(settings.tls.ca, base.join("certs/ca.pem"));
        assert_eq!(settings.tls.key, base.join("certs/node.key"));
        assert_eq!(settings.status, Some(addr("127.0.0.1:8080")));
        assert_eq!(
            (
                settings.tick_ms,
                settings.election_ticks,
                settings.heartbeat_ticks
            ),
            (20, 10, 2)
        );
        assert_eq!((settings.ranges, settings.workers), (RANGES_DEFAULT, None));
        let engine = NodeOptions::new(1, base, Bootstrap::Ranges(Vec::new()));
        assert_eq!(
            Duration::from_millis(settings.tick_ms),
            engine.tick_interval,
            "the default tick is the engine's"
        );
        assert_eq!(settings.members(), vec![1, 2, 3]);
    }

    #[test]
    fn flags_override_the_file() {
        let fixture = Fixture::new();
        let settings = fixture
            .load(
                "tick_ms = 50\nranges = 8\nworkers = 2\n",
                &[
                    "--id",
                    "2",
                    "--listen",
                    "127.0.0.1:7002",
                    "--peer",
                    "1=127.0.0.1:7001,2=127.0.0.1:7002",
                    "--peer",
                    "4=127.0.0.1:7004",
                    "--tick-ms",
                    "5",
                    "--workers",
                    "3",
                ],
            )
            .expect("valid settings");
        assert_eq!(settings.id, 2);
        assert_eq!(settings.listen, addr("127.0.0.1:7002"));
        // The flags' peers replace the file's: node 3 is gone.
        assert_eq!(settings.members(), vec![1, 2, 4]);
        assert_eq!(settings.tick_ms, 5);
        assert_eq!(settings.workers, Some(3));
        // Keys without a flag keep the file's value.
        assert_eq!(settings.ranges, 8);
    }

    #[test]
    fn flags_alone_are_enough_and_their_paths_are_not_moved() {
        let fixture = Fixture::new();
        let certs = fixture.dir.path().join("certs");
        let (ca, cert, key) = (
            certs.join("ca.pem"),
            certs.join("node.pem"),
            certs.join("node.key"),
        );
        let settings = load(
            None,
            &args(&[
                "--id",
                "7",
                "--listen",
                "0.0.0.0:7000",
                "--data-dir",
                "relative/data",
                "--ca",
                ca.to_str().unwrap(),
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ]),
        )
        .expect("valid settings");
        assert_eq!(settings.data_dir, PathBuf::from("relative/data"));
        // No peers: a cluster of one.
        assert_eq!(settings.members(), vec![7]);
        assert_eq!(settings.status, None);
    }

    #[test]
    fn unknown_keys_and_malformed_files_say_where() {
        let fixture = Fixture::new();
        match fixture.load("tick_msec = 5\n", &[]) {
            Err(error @ ConfigError::Parse { .. }) => {
                let message = error.to_string();
                assert!(message.contains("tick_msec"), "{message}");
                assert!(message.contains("settings.toml"), "{message}");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
        match fixture.load("ranges = \"many\"\n", &[]) {
            Err(error @ ConfigError::Parse { .. }) => {
                assert!(error.to_string().contains("line 8"), "{error}")
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
        let missing = fixture.dir.path().join("absent.toml");
        assert!(matches!(
            load(Some(&missing), &StartArgs::default()),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn missing_required_settings_are_named() {
        let fixture = Fixture::new();
        let (setting, message) = problem(load(None, &StartArgs::default()));
        assert_eq!(setting, "id");
        assert!(message.contains("--id"), "{message}");
        let path = fixture.file("id = 1\n");
        assert_eq!(problem(load(Some(&path), &args(&[]))).0, "listen");
        let path = fixture.file("id = 1\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!(problem(load(Some(&path), &args(&[]))).0, "data_dir");
        let path = fixture.file("id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\n");
        let (setting, message) = problem(load(Some(&path), &args(&[])));
        assert_eq!(setting, "ca");
        assert!(message.contains("mutual TLS"), "{message}");
    }

    #[test]
    fn id_must_be_positive() {
        let fixture = Fixture::new();
        assert_eq!(
            problem(fixture.load("", &["--id", "0"])),
            ("id", "must be > 0".to_string())
        );
    }

    #[test]
    fn addresses_must_be_socket_addresses() {
        let fixture = Fixture::new();
        assert_eq!(
            problem(fixture.load("", &["--listen", "abc"])),
            (
                "listen",
                "\"abc\" is not a socket address (IP:PORT, e.g. 10.0.0.1:7000)".to_string()
            )
        );
        assert_eq!(
            problem(fixture.load("status = \"localhost\"\n", &[])).0,
            "status"
        );
    }

    #[test]
    fn a_node_listed_twice_is_refused() {
        let fixture = Fixture::new();
        let twice = [
            "--peer",
            "2=127.0.0.1:7002,3=127.0.0.1:7003,3=127.0.0.1:7013",
        ];
        assert_eq!(
            problem(fixture.load("", &twice)),
            ("peers", "node 3 is listed twice".to_string())
        );
        let self_twice = ["--peer", "1=127.0.0.1:7001,1=127.0.0.1:7001"];
        assert_eq!(
            problem(fixture.load("", &self_twice)),
            ("peers", "node 1 is listed twice".to_string())
        );
    }

    #[test]
    fn this_node_in_peers_must_have_its_listen_address() {
        let fixture = Fixture::new();
        let elsewhere = ["--peer", "1=127.0.0.1:9999,2=127.0.0.1:7002"];
        let (setting, message) = problem(fixture.load("", &elsewhere));
        assert_eq!(setting, "peers");
        assert!(
            message.contains("node 1 is this node, listed at 127.0.0.1:9999"),
            "{message}"
        );
    }

    #[test]
    fn two_nodes_cannot_share_an_address() {
        let fixture = Fixture::new();
        let shared = ["--peer", "2=127.0.0.1:7002,3=127.0.0.1:7002"];
        assert_eq!(
            problem(fixture.load("", &shared)),
            (
                "peers",
                "nodes 2 and 3 have the same address 127.0.0.1:7002".to_string()
            )
        );
        // Nor a peer this node's own address.
        let mine = ["--peer", "2=127.0.0.1:7001"];
        assert!(problem(fixture.load("", &mine)).1.contains("nodes 1 and 2"));
    }

    #[test]
    fn malformed_peer_entries_are_refused() {
        let fixture = Fixture::new();
        for (entry, expected) in [
            ("127.0.0.1:7002", "is not ID=ADDR"),
            ("two=127.0.0.1:7002", "\"two\" is not a node id"),
            ("0=127.0.0.1:7002", "node ids must be > 0"),
            ("2=nowhere", "node 2: \"nowhere\" is not a socket address"),
        ] {
            let (setting, message) = problem(fixture.load("", &["--peer", entry]));
            assert_eq!(setting, "peers");
            assert!(message.contains(expected), "{entry}: {message}");
        }
    }

    #[test]
    fn numbers_out_of_bounds_are_refused() {
        let fixture = Fixture::new();
        for (flags, setting) in [
            (["--tick-ms", "0"], "tick_ms"),
            (["--tick-ms", "10001"], "tick_ms"),
            (["--heartbeat-ticks", "0"], "heartbeat_ticks"),
            (["--election-ticks", "1001"], "election_ticks"),
            (["--ranges", "0"], "ranges"),
            (["--ranges", "65537"], "ranges"),
            (["--workers", "0"], "workers"),
            (["--workers", "65"], "workers"),
        ] {
            let (named, message) = problem(fixture.load("", &flags));
            assert_eq!(named, setting, "{flags:?}");
            assert!(message.contains("must be between"), "{message}");
        }
        assert_eq!(
            problem(fixture.load("tick_ms = 0\n", &[])).1,
            "0 is out of bounds: must be between 1 and 10000"
        );
    }

    #[test]
    fn election_ticks_must_exceed_heartbeat_ticks() {
        let fixture = Fixture::new();
        let (setting, message) =
            problem(fixture.load("election_ticks = 4\nheartbeat_ticks = 4\n", &[]));
        assert_eq!(setting, "election_ticks");
        assert!(
            message.starts_with("4 must be greater than heartbeat_ticks (4)"),
            "{message}"
        );
    }

    #[test]
    fn certificate_files_must_exist() {
        let fixture = Fixture::new();
        std::fs::remove_file(fixture.dir.path().join("certs/node.pem")).unwrap();
        let (setting, message) = problem(fixture.load("", &[]));
        assert_eq!(setting, "cert");
        assert!(message.ends_with("node.pem does not exist"), "{message}");
        let directory = fixture.dir.path().join("certs");
        let (setting, message) = problem(fixture.load("", &["--key", directory.to_str().unwrap()]));
        assert_eq!(setting, "cert", "the first problem is reported first");
        assert!(message.contains("does not exist"));
        std::fs::write(directory.join("node.pem"), b"PEM").unwrap();
        let (setting, message) = problem(fixture.load("", &["--key", directory.to_str().unwrap()]));
        assert_eq!(setting, "key");
        assert!(message.ends_with("is not a file"), "{message}");
    }

    #[test]
    fn a_data_dir_that_is_a_file_is_refused() {
        let fixture = Fixture::new();
        std::fs::write(fixture.dir.path().join("data"), b"").unwrap();
        let (setting, message) = problem(fixture.load("", &[]));
        assert_eq!(setting, "data_dir");
        assert!(message.ends_with("is not a directory"), "{message}");
    }

    #[test]
    fn node_options_carry_the_settings() {
        let fixture = Fixture::new();
        let settings = fixture
            .load(
                "tick_ms = 7\nelection_ticks = 30\nheartbeat_ticks = 3\nranges = 16\nworkers = 2\n",
                &[],
            )
            .expect("valid settings");
        let options = settings.node_options();
        assert_eq!(options.id, 1);
        assert_eq!(options.data_dir, fixture.dir.path().join("data"));
        assert_eq!(options.tick_interval, Duration::from_millis(7));
        assert_eq!(options.workers, 2);
        assert_eq!(options.node.raft.election_ticks, 30);
        assert_eq!(options.node.raft.heartbeat_ticks, 3);
        assert_eq!(options.node.peer_down_after_ticks, 30);
        let ranges = options.bootstrap.descriptors().expect("a valid layout");
        assert_eq!(ranges.len(), 16);
        assert!(ranges.iter().all(|r| r.replicas == vec![1, 2, 3]));
    }
}
