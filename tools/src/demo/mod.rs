//! `flotilla demo`: a local cluster of `flotilla start` processes on
//! loopback, talking QUIC with mutual TLS (a CA and certificates made for
//! the run). Optionally it first measures the cluster at rest (frames per
//! node pair per tick, CPU per node); then it runs a mixed workload over
//! many ranges through the client protocol, kills the node holding the most
//! leaders with SIGKILL part-way, and prints throughput, latency
//! percentiles, the failover time (until every range has a leader again,
//! the slowest range) and a final check that every acknowledged write reads
//! back.

pub mod cli;
mod cluster;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla::client::{Caller, RemoteDb};
use flotilla::Error;
use flotilla_transport::NodeId;
use hdrhistogram::Histogram;

pub use self::cluster::{ClusterSettings, ProcessCluster};

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub ranges: u64,
    pub seconds: f64,
    pub clients: usize,
    pub keys_per_client: u32,
    /// Where the nodes keep their data; a temporary directory if `None`.
    pub data_dir: Option<PathBuf>,
    pub kill: bool,
    /// Seconds of measuring the idle cluster before the workload (0: none).
    pub idle_seconds: f64,
    pub tick_ms: u64,
    /// Raft workers per node; the engine's default if `None`.
    pub workers: Option<usize>,
    /// The `flotilla` binary to start the nodes with.
    pub exe: PathBuf,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            ranges: 64,
            seconds: 8.0,
            clients: 32,
            keys_per_client: 200,
            data_dir: None,
            kill: true,
            idle_seconds: 0.0,
            tick_ms: 20,
            workers: None,
            exe: PathBuf::from("flotilla"),
        }
    }
}

/// The cluster at rest, over the measured interval.
#[derive(Clone, Debug, Default)]
pub struct IdleReport {
    pub seconds: f64,
    pub ticks: f64,
    /// Per node pair (sender, receiver): frames sent per tick interval.
    pub frames_per_tick: BTreeMap<(NodeId, NodeId), f64>,
    /// Per node: CPU used, as a percentage of one core.
    pub cpu_percent: BTreeMap<NodeId, f64>,
    /// Replicas still awake at the end (0 when everything quiesced).
    pub awake_groups: usize,
}

/// What the demo measured.
#[derive(Debug, Default)]
pub struct DemoReport {
    pub elect_ms: u64,
    pub idle: Option<IdleReport>,
    pub writes: u64,
    pub reads: u64,
    pub errors: u64,
    pub seconds: f64,
    pub write_us: (u64, u64, u64),
    pub read_us: (u64, u64, u64),
    pub killed: Option<(NodeId, usize)>,
    pub failover_ms: Option<u64>,
    /// Writes acknowledged after every range had a leader again.
    pub writes_after_failover: u64,
    pub keys_checked: usize,
    pub failures: Vec<String>,
    pub data_dir: PathBuf,
}

/// A mutex-protected value shared by the demo's tasks.
type Shared<T> = Arc<std::sync::Mutex<T>>;

/// One client's view of its own keys: the last acknowledged value, and the
/// writes after it whose outcome is unknown (any of them may have landed).
#[derive(Debug, Default, Clone)]
struct KeyState {
    acked: Option<Vec<u8>>,
    maybe: Vec<Vec<u8>>,
}

impl KeyState {
    fn allows(&self, value: &Option<Vec<u8>>) -> bool {
        *value == self.acked || value.as_ref().is_some_and(|v| self.maybe.contains(v))
    }
}

fn client_key(client: usize, k: u32) -> Vec<u8> {
    let spread = (client as u32)
        .wrapping_mul(7_919)
        .wrapping_add(k.wrapping_mul(2_654_435_761));
    let mut key = spread.to_be_bytes().to_vec();
    key.extend_from_slice(format!("/c{client}/k{k}").as_bytes());
    key
}

fn percentiles(h: &Histogram<u64>) -> (u64, u64, u64) {
    (
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
    )
}

/// Blocks the current thread (a tokio worker) on a cluster call.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Runs the demo. `Err` only when the cluster could not even start.
pub async fn run(options: DemoOptions) -> Result<DemoReport, String> {
    let temp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let base = options
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let settings = ClusterSettings {
        nodes: 3,
        ranges: options.ranges,
        tick_ms: options.tick_ms,
        workers: options.workers,
    };
    let started = Instant::now();
    let mut cluster = blocking(|| ProcessCluster::start(&options.exe, &base, &settings))?;
    println!(
        "demo: 3 node processes on loopback (QUIC, mutual TLS), {} ranges each replicated 3 \
         ways, data and logs in {}",
        options.ranges,
        base.display()
    );
    let mut report = DemoReport {
        data_dir: base.clone(),
        ..DemoReport::default()
    };
    wait_for_leaders(&cluster, options.ranges as usize, Duration::from_secs(60)).await?;
    report.elect_ms = started.elapsed().as_millis() as u64;
    println!(
        "demo: every range elected a leader {} ms after the processes started",
        report.elect_ms
    );
    if options.idle_seconds > 0.0 {
        report.idle = Some(measure_idle(&cluster, &options).await?);
    }

    let callers = blocking(|| cluster.callers());
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let failures: Shared<Vec<String>> = Default::default();
    let latency = Arc::new(std::sync::Mutex::new((
        Histogram::<u64>::new(3).map_err(|e| e.to_string())?,
        Histogram::<u64>::new(3).map_err(|e| e.to_string())?,
    )));
    let mut tasks = Vec::new();
    for client in 0..options.clients {
        // Each client starts at another node: the load spreads, and every
        // node forwards to the leaders it does not hold.
        let mut rotated = callers.clone();
        rotated.rotate_left(client % callers.len().max(1));
        let db = RemoteDb::new(rotated).map_err(|e| e.to_string())?;
        let worker = ClientWorker {
            client,
            keys: options.keys_per_client,
            db,
            stop: Arc::clone(&stop),
            counters: Arc::clone(&counters),
            failures: Arc::clone(&failures),
            latency: Arc::clone(&latency),
        };
        tasks.push(tokio::spawn(worker.run()));
    }

    let progress = indicatif::ProgressBar::new((options.seconds * 10.0) as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} ({msg})")
            .map_err(|e| e.to_string())?,
    );
    let run_started = Instant::now();
    let duration = Duration::from_secs_f64(options.seconds);
    let kill_at = duration.mul_f64(0.4);
    let mut killed_at: Option<Instant> = None;
    let mut writes_at_failover = 0;
    while run_started.elapsed() < duration || (killed_at.is_some() && report.failover_ms.is_none())
    {
        if run_started.elapsed() > duration + Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if run_started.elapsed() < duration {
            progress.inc(1);
        }
        progress.set_message(format!(
            "{} writes, {} reads",
            counters.writes.load(Ordering::Relaxed),
            counters.reads.load(Ordering::Relaxed)
        ));
        if options.kill && killed_at.is_none() && run_started.elapsed() >= kill_at {
            let mut busiest = (0, 0);
            for id in cluster.alive() {
                let leaders = blocking(|| cluster.status(id))?.leaders;
                if leaders >= busiest.1 {
                    busiest = (id, leaders);
                }
            }
            let (victim, leaders) = busiest;
            blocking(|| cluster.kill(victim))?;
            killed_at = Some(Instant::now());
            report.killed = Some((victim, leaders));
            progress.println(format!(
                "demo: killed node {victim} (SIGKILL), which led {leaders} ranges"
            ));
            // Watch for the last range's new leader closely.
            report.failover_ms = watch_failover(&cluster, options.ranges as usize).await;
            writes_at_failover = counters.writes.load(Ordering::Relaxed);
        }
    }
    progress.finish_and_clear();
    stop.store(true, Ordering::Relaxed);
    report.seconds = run_started.elapsed().as_secs_f64();
    let mut states = Vec::new();
    for task in tasks {
        states.push(task.await.map_err(|e| format!("client task: {e}"))?);
    }
    if killed_at.is_some() && report.failover_ms.is_none() {
        report
            .failures
            .push("some ranges never got a new leader".into());
    }

    // Every acknowledged write must read back through the survivors.
    let checker = RemoteDb::new(callers).map_err(|e| e.to_string())?;
    for (client, state) in states.iter().enumerate() {
        for (&k, expected) in state {
            let key = client_key(client, k);
            let value = read_back(&checker, &key).await;
            report.keys_checked += 1;
            match value {
                Ok(v) if expected.allows(&v) => {}
                other => report.failures.push(format!(
                    "key {key:?}: read {other:?}, last acknowledged {:?}",
                    expected.acked
                )),
            }
        }
    }
    report.writes = counters.writes.load(Ordering::Relaxed);
    if report.failover_ms.is_some() {
        report.writes_after_failover = report.writes.saturating_sub(writes_at_failover);
        if report.writes_after_failover == 0 {
            report
                .failures
                .push("no write was acknowledged after the failover".into());
        }
    }
    report.reads = counters.reads.load(Ordering::Relaxed);
    report.errors = counters.errors.load(Ordering::Relaxed);
    {
        let latency = latency.lock().map_err(|e| e.to_string())?;
        report.write_us = percentiles(&latency.0);
        report.read_us = percentiles(&latency.1);
    }
    report
        .failures
        .extend(failures.lock().map_err(|e| e.to_string())?.iter().cloned());
    let problems = blocking(|| cluster.stop());
    report
        .failures
        .extend(problems.into_iter().map(|p| format!("shutdown: {p}")));
    if options.data_dir.is_none() {
        drop(cluster);
        drop(temp);
    }
    Ok(report)
}

/// Reads `key` for the final check, retrying while the cluster settles.
async fn read_back(db: &RemoteDb, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    let mut last = Err(Error::Unavailable("not tried".into()));
    for _ in 0..20 {
        last = db.get(key).await;
        match &last {
            Err(Error::Unavailable(_) | Error::Timeout | Error::NotLeader { .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => return last,
        }
    }
    last
}

async fn wait_for_leaders(
    cluster: &ProcessCluster,
    ranges: usize,
    timeout: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let leaders = blocking(|| cluster.leaders())?;
        if leaders >= ranges {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "only {leaders} of {ranges} ranges elected a leader within {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the survivors until every range has a leader again; the time
/// since the kill, or `None` after 30 s.
async fn watch_failover(cluster: &ProcessCluster, ranges: usize) -> Option<u64> {
    let killed = Instant::now();
    while killed.elapsed() < Duration::from_secs(30) {
        if blocking(|| cluster.leaders()).is_ok_and(|leaders| leaders >= ranges) {
            return Some(killed.elapsed().as_millis() as u64);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Waits for the cluster to quiesce, then measures frames per node pair
/// and CPU per node over `options.idle_seconds`.
async fn measure_idle(
    cluster: &ProcessCluster,
    options: &DemoOptions,
) -> Result<IdleReport, String> {
    let quiet_by = Instant::now() + Duration::from_secs(30);
    while Instant::now() < quiet_by {
        let awake: usize = cluster
            .alive()
            .into_iter()
            .map(|id| blocking(|| cluster.status(id)).map(|s| s.awake_groups))
            .sum::<Result<usize, String>>()?;
        if awake == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sample = || -> Result<BTreeMap<NodeId, NodeSample>, String> {
        let mut sample = BTreeMap::new();
        for id in cluster.alive() {
            let status = cluster.status(id)?;
            let cpu = cluster
                .pid(id)
                .and_then(cluster::cpu_time)
                .ok_or(format!("no CPU time for node {id}"))?;
            let sent = status
                .peers
                .iter()
                .map(|p| (p.node, p.frames_sent))
                .collect();
            sample.insert(id, (cpu, sent));
        }
        Ok(sample)
    };
    let before = blocking(sample)?;
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(options.idle_seconds)).await;
    let after = blocking(sample)?;
    let seconds = began.elapsed().as_secs_f64();
    let ticks = seconds * 1000.0 / options.tick_ms as f64;
    let mut report = IdleReport {
        seconds,
        ticks,
        ..IdleReport::default()
    };
    for (id, (cpu_after, sent_after)) in &after {
        let Some((cpu_before, sent_before)) = before.get(id) else {
            continue;
        };
        let cpu = cpu_after.saturating_sub(*cpu_before).as_secs_f64();
        report.cpu_percent.insert(*id, cpu / seconds * 100.0);
        for &(peer, frames) in sent_after {
            let earlier = sent_before
                .iter()
                .find(|(p, _)| *p == peer)
                .map_or(0, |&(_, f)| f);
            report
                .frames_per_tick
                .insert((*id, peer), frames.saturating_sub(earlier) as f64 / ticks);
        }
    }
    report.awake_groups = cluster
        .alive()
        .into_iter()
        .map(|id| blocking(|| cluster.status(id)).map(|s| s.awake_groups))
        .sum::<Result<usize, String>>()?;
    Ok(report)
}

/// A node's CPU time so far and the frames it sent each peer.
type NodeSample = (Duration, Vec<(NodeId, u64)>);

#[derive(Debug, Default)]
struct Counters {
    writes: AtomicU64,
    reads: AtomicU64,
    errors: AtomicU64,
}

/// One client of the workload: 60% puts and 40% linearizable gets of its
/// own keys, each read checked against what it wrote.
struct ClientWorker {
    client: usize,
    keys: u32,
    db: RemoteDb,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    failures: Shared<Vec<String>>,
    latency: Shared<(Histogram<u64>, Histogram<u64>)>,
}

impl ClientWorker {
    async fn run(self) -> BTreeMap<u32, KeyState> {
        let client = self.client;
        let mut state: BTreeMap<u32, KeyState> = BTreeMap::new();
        let mut seq = 0u64;
        let mut rng = (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        while !self.stop.load(Ordering::Relaxed) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = (rng % u64::from(self.keys)) as u32;
            let key = client_key(client, k);
            let begin = Instant::now();
            if rng % 10 < 6 {
                seq += 1;
                let value = format!("c{client}-s{seq}").into_bytes();
                match self.db.put(&key, &value).await {
                    Ok(()) => {
                        self.record(begin, true);
                        self.counters.writes.fetch_add(1, Ordering::Relaxed);
                        state.insert(
                            k,
                            KeyState {
                                acked: Some(value),
                                maybe: Vec::new(),
                            },
                        );
                    }
                    Err(Error::Timeout | Error::Shutdown) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        state.entry(k).or_default().maybe.push(value);
                    }
                    Err(_) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            } else {
                match self.db.get(&key).await {
                    Ok(value) => {
                        self.record(begin, false);
                        self.counters.reads.fetch_add(1, Ordering::Relaxed);
                        let expected = state.get(&k).cloned().unwrap_or_default();
                        if !expected.allows(&value) {
                            if let Ok(mut f) = self.failures.lock() {
                                f.push(format!(
                                    "client {client} read {value:?} for {key:?}, expected {:?}",
                                    expected.acked
                                ));
                            }
                        } else if let Some(v) = value {
                            // What was read is now known to be the latest.
                            state.insert(
                                k,
                                KeyState {
                                    acked: Some(v),
                                    maybe: Vec::new(),
                                },
                            );
                        }
                    }
                    Err(_) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        state
    }

    fn record(&self, begin: Instant, write: bool) {
        if let Ok(mut latency) = self.latency.lock() {
            let histogram = if write {
                &mut latency.0
            } else {
                &mut latency.1
            };
            let _ = histogram.record(begin.elapsed().as_micros() as u64);
        }
    }
}

/// The callers of a cluster, for [`RemoteDb`]s.
pub type Callers = Vec<(NodeId, Arc<dyn Caller>)>;
