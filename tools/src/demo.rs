//! `flotilla demo`: a local 3-node cluster (in-process nodes, real WALs on
//! disk, frames through the in-process transport) running a mixed workload
//! over many ranges; part-way through, the node holding the most leaders is
//! killed. It prints throughput, latency percentiles, the failover time and
//! a final check that every acknowledged write reads back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla::{Bootstrap, Db, Error, Node, NodeOptions};
use flotilla_transport::local::LocalNetwork;
use hdrhistogram::Histogram;

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
        }
    }
}

/// What the demo measured.
#[derive(Debug, Default)]
pub struct DemoReport {
    pub writes: u64,
    pub reads: u64,
    pub errors: u64,
    pub seconds: f64,
    pub write_us: (u64, u64, u64),
    pub read_us: (u64, u64, u64),
    pub killed: Option<(u64, usize)>,
    pub failover_ms: Option<u64>,
    pub keys_checked: usize,
    pub failures: Vec<String>,
}

/// A mutex-protected value shared by the demo's tasks.
type Shared<T> = Arc<std::sync::Mutex<T>>;

/// One client's view of its own keys: the last acknowledged value, and
/// whether a write with an unknown outcome came after it.
#[derive(Debug, Default, Clone)]
struct KeyState {
    acked: Option<Vec<u8>>,
    maybe: Vec<Vec<u8>>,
}

fn client_key(client: usize, k: u32) -> Vec<u8> {
    let spread = (client as u32)
        .wrapping_mul(7_919)
        .wrapping_add(k.wrapping_mul(2_654_435_761));
    let mut key = spread.to_be_bytes().to_vec();
    key.extend_from_slice(format!("/c{client}/k{k}").as_bytes());
    key
}

fn total_leaders(nodes: &[Option<Node>]) -> usize {
    nodes.iter().flatten().map(|n| n.stats().leaders).sum()
}

fn percentiles(h: &Histogram<u64>) -> (u64, u64, u64) {
    (
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
    )
}

/// Runs the demo. `Err` only when the cluster could not even start.
pub async fn run(options: DemoOptions) -> Result<DemoReport, String> {
    let temp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let base = options
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let network = LocalNetwork::new(42);
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for id in 1..=3u64 {
        let (transport, inbox) = network.register(id, 1 << 16);
        let mut node_options = NodeOptions::new(
            id,
            base.join(format!("node-{id}")),
            Bootstrap::EvenSplits {
                count: options.ranges,
                nodes: vec![1, 2, 3],
            },
        );
        node_options.tick_interval = Duration::from_millis(10);
        node_options.wal.zero_fill_segments = false;
        let node = Node::open(node_options, Arc::new(transport), inbox)
            .map_err(|e| format!("node {id} did not open: {e}"))?;
        nodes.push(Some(node));
    }
    println!(
        "demo: 3 nodes, {} ranges each replicated 3 ways, data in {}",
        options.ranges,
        base.display()
    );
    let started = Instant::now();
    while total_leaders(&nodes) < options.ranges as usize {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("ranges did not elect leaders within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "demo: every range elected a leader in {} ms",
        started.elapsed().as_millis()
    );

    let dbs: Vec<Db> = nodes.iter().flatten().map(Node::db).collect();
    let dead: Arc<Vec<AtomicBool>> = Arc::new((0..3).map(|_| AtomicBool::new(false)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let failures: Shared<Vec<String>> = Default::default();
    let write_latency: Shared<Histogram<u64>> = Arc::new(std::sync::Mutex::new(
        Histogram::new(3).map_err(|e| e.to_string())?,
    ));
    let read_latency: Shared<Histogram<u64>> = Arc::new(std::sync::Mutex::new(
        Histogram::new(3).map_err(|e| e.to_string())?,
    ));
    let mut tasks = Vec::new();
    for client in 0..options.clients {
        let dbs = dbs.clone();
        let dead = Arc::clone(&dead);
        let stop = Arc::clone(&stop);
        let (writes, reads, errors) =
            (Arc::clone(&writes), Arc::clone(&reads), Arc::clone(&errors));
        let failures = Arc::clone(&failures);
        let (write_latency, read_latency) = (Arc::clone(&write_latency), Arc::clone(&read_latency));
        let keys = options.keys_per_client;
        tasks.push(tokio::spawn(async move {
            let mut state: BTreeMap<u32, KeyState> = BTreeMap::new();
            let mut node = client % 3;
            let mut seq = 0u64;
            let mut rng = (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            while !stop.load(Ordering::Relaxed) {
                if dead[node].load(Ordering::Relaxed) {
                    node = (node + 1) % 3;
                    continue;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let k = (rng % u64::from(keys)) as u32;
                let key = client_key(client, k);
                let begin = Instant::now();
                if rng % 10 < 6 {
                    seq += 1;
                    let value = format!("c{client}-s{seq}").into_bytes();
                    match dbs[node].put(&key, &value).await {
                        Ok(()) => {
                            let _ = write_latency
                                .lock()
                                .map(|mut h| h.record(begin.elapsed().as_micros() as u64));
                            writes.fetch_add(1, Ordering::Relaxed);
                            state.insert(
                                k,
                                KeyState {
                                    acked: Some(value),
                                    maybe: Vec::new(),
                                },
                            );
                        }
                        Err(Error::Timeout | Error::Shutdown) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            state.entry(k).or_default().maybe.push(value);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                } else {
                    match dbs[node].get(&key).await {
                        Ok(value) => {
                            let _ = read_latency
                                .lock()
                                .map(|mut h| h.record(begin.elapsed().as_micros() as u64));
                            reads.fetch_add(1, Ordering::Relaxed);
                            let expected = state.get(&k).cloned().unwrap_or_default();
                            let fine = value == expected.acked
                                || value.as_ref().is_some_and(|v| expected.maybe.contains(v));
                            if !fine {
                                if let Ok(mut f) = failures.lock() {
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
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            state
        }));
    }

    let progress = indicatif::ProgressBar::new((options.seconds * 10.0) as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} ({msg})")
            .map_err(|e| e.to_string())?,
    );
    let run_started = Instant::now();
    let duration = Duration::from_secs_f64(options.seconds);
    let mut report = DemoReport::default();
    let kill_at = duration.mul_f64(0.4);
    let mut killed_at: Option<Instant> = None;
    while run_started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        progress.inc(1);
        progress.set_message(format!(
            "{} writes, {} reads",
            writes.load(Ordering::Relaxed),
            reads.load(Ordering::Relaxed)
        ));
        if options.kill && killed_at.is_none() && run_started.elapsed() >= kill_at {
            let (victim, leaders) = nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.as_ref().map(|n| (i, n.stats().leaders)))
                .max_by_key(|&(_, leaders)| leaders)
                .unwrap_or((0, 0));
            let id = victim as u64 + 1;
            dead[victim].store(true, Ordering::Relaxed);
            network.isolate(id);
            network.unregister(id);
            if let Some(node) = nodes[victim].take() {
                node.shutdown();
            }
            killed_at = Some(Instant::now());
            report.killed = Some((id, leaders));
            progress.println(format!(
                "demo: killed node {id}, which led {leaders} ranges"
            ));
        }
        if let Some(at) = killed_at {
            if report.failover_ms.is_none() && total_leaders(&nodes) >= options.ranges as usize {
                report.failover_ms = Some(at.elapsed().as_millis() as u64);
            }
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

    // Every acknowledged write must read back from a surviving node.
    let survivor = nodes
        .iter()
        .flatten()
        .next()
        .map(Node::db)
        .ok_or("no node survived")?;
    for (client, state) in states.iter().enumerate() {
        for (&k, expected) in state {
            let key = client_key(client, k);
            let value = survivor.get(&key).await;
            report.keys_checked += 1;
            let fine = match &value {
                Ok(v) => {
                    *v == expected.acked || v.as_ref().is_some_and(|v| expected.maybe.contains(v))
                }
                Err(_) => false,
            };
            if !fine {
                report.failures.push(format!(
                    "key {key:?}: read {value:?}, last acknowledged {:?}",
                    expected.acked
                ));
            }
        }
    }
    report.writes = writes.load(Ordering::Relaxed);
    report.reads = reads.load(Ordering::Relaxed);
    report.errors = errors.load(Ordering::Relaxed);
    report.write_us = percentiles(&*write_latency.lock().map_err(|e| e.to_string())?);
    report.read_us = percentiles(&*read_latency.lock().map_err(|e| e.to_string())?);
    report
        .failures
        .extend(failures.lock().map_err(|e| e.to_string())?.iter().cloned());
    drop(nodes);
    drop(network);
    Ok(report)
}
