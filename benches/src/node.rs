//! `flotilla-bench node`: one node with many ranges — how long it takes to
//! open, to take one write per range, to restart from its WAL, what an idle
//! range costs in memory, and how much CPU the node burns with every range
//! quiesced — and the write throughput of a small cluster, measured for one
//! raft worker per node (the baseline) and for the worker count under test.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla::{Bootstrap, Node, NodeOptions};
use flotilla_transport::local::LocalNetwork;
use hdrhistogram::Histogram;

/// What the run measured.
#[derive(Debug)]
pub struct NodeReport {
    pub ranges: u64,
    pub workers: usize,
    pub open_ms: u128,
    pub elect_ms: u128,
    pub write_ms: u128,
    pub restart_ms: u128,
    pub restart_elect_ms: u128,
    pub read_ms: u128,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub heap_before: i64,
    pub heap_after: i64,
    pub data_bytes: u64,
    pub idle_cpu_percent: f64,
    pub idle_seconds: f64,
}

/// Resident anonymous memory of this process (heap and stacks, not the
/// page cache of mapped WAL segments, which the kernel can drop), from /proc.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) this process used, from /proc.
pub fn cpu_time() -> Duration {
    let ticks_per_second = 100.0;
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some(Duration::from_secs_f64((utime + stime) / ticks_per_second))
        })
        .unwrap_or_default()
}

fn open_node(dir: &Path, ranges: u64, workers: Option<usize>) -> (Node, LocalNetwork) {
    let network = LocalNetwork::new(1);
    let (transport, inbox) = network.register(1, 1 << 16);
    let mut options = NodeOptions::new(
        1,
        dir,
        Bootstrap::EvenSplits {
            count: ranges,
            nodes: vec![1],
        },
    );
    options.tick_interval = Duration::from_millis(20);
    options.node.quiesce_after_idle_ticks = 5;
    options.wal.zero_fill_segments = false;
    if let Some(workers) = workers {
        options.workers = workers;
    }
    if let Some(mib) = std::env::var("FLOTILLA_BENCH_WAL_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        options.wal.cache_bytes_max = mib << 20;
    }
    let node = Node::open(options, Arc::new(transport), inbox)
        .unwrap_or_else(|e| panic!("open node: {e}"));
    (node, network)
}

fn wait_for_leaders(node: &Node, ranges: u64) {
    let started = Instant::now();
    while node.stats().leaders < ranges as usize {
        assert!(started.elapsed() < Duration::from_secs(120), "no leaders");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn key_in_range(i: u64, ranges: u64) -> Vec<u8> {
    // The first two bytes pick the range (even splits of the 16-bit prefix).
    let prefix = ((i * 65_536 + 65_535) / ranges) as u16;
    let mut key = prefix.to_be_bytes().to_vec();
    key.extend_from_slice(format!("/key-{i}").as_bytes());
    key
}

/// Runs the measurement in `dir`, with `workers` raft workers (the
/// engine's default if `None`).
pub fn run(dir: &Path, ranges: u64, idle: Duration, workers: Option<usize>) -> NodeReport {
    let rss_before_kib = rss_kib();
    let heap_before = live_heap_bytes();
    let started = Instant::now();
    let (node, network) = open_node(dir, ranges, workers);
    let workers = node.workers();
    let open_ms = started.elapsed().as_millis();
    eprintln!(
        "heap after open: {} KiB",
        (live_heap_bytes() - heap_before) / 1024
    );
    wait_for_leaders(&node, ranges);
    eprintln!(
        "heap after elections: {} KiB",
        (live_heap_bytes() - heap_before) / 1024
    );
    let elect_ms = started.elapsed().as_millis() - open_ms;

    let db = node.db().blocking();
    let write_started = Instant::now();
    let value = vec![0x5au8; 100];
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let db = db.clone();
            let value = &value;
            scope.spawn(move || {
                for i in (t..ranges).step_by(8) {
                    db.put(&key_in_range(i, ranges), value)
                        .unwrap_or_else(|e| panic!("put {i}: {e}"));
                }
            });
        }
    });
    let write_ms = write_started.elapsed().as_millis();
    eprintln!(
        "heap after writes: {} KiB",
        (live_heap_bytes() - heap_before) / 1024
    );
    let data_bytes = ranges * (value.len() as u64 + 16);

    // Let every group quiesce, then measure memory and idle CPU.
    let quiet_started = Instant::now();
    while node.stats().awake_groups > 0 {
        assert!(
            quiet_started.elapsed() < Duration::from_secs(60),
            "groups stay awake"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss_after_kib = rss_kib();
    let heap_after = live_heap_bytes();
    let cpu_before = cpu_time();
    let idle_started = Instant::now();
    std::thread::sleep(idle);
    let idle_seconds = idle_started.elapsed().as_secs_f64();
    let idle_cpu_percent = (cpu_time() - cpu_before).as_secs_f64() / idle_seconds * 100.0;

    node.shutdown();
    drop(network);
    let restart_started = Instant::now();
    let (node, network) = open_node(dir, ranges, Some(workers));
    let restart_ms = restart_started.elapsed().as_millis();
    wait_for_leaders(&node, ranges);
    let restart_elect_ms = restart_started.elapsed().as_millis() - restart_ms;
    let db = node.db().blocking();
    let read_started = Instant::now();
    for i in 0..ranges {
        let got = db
            .get(&key_in_range(i, ranges))
            .unwrap_or_else(|e| panic!("get {i}: {e}"));
        assert_eq!(got.as_deref(), Some(&value[..]), "range {i} lost its value");
    }
    let read_ms = read_started.elapsed().as_millis();
    node.shutdown();
    drop(network);
    NodeReport {
        ranges,
        workers,
        open_ms,
        elect_ms,
        write_ms,
        restart_ms,
        restart_elect_ms,
        read_ms,
        rss_before_kib,
        rss_after_kib,
        heap_before,
        heap_after,
        data_bytes,
        idle_cpu_percent,
        idle_seconds,
    }
}

/// What a throughput run measured.
#[derive(Debug)]
pub struct ThroughputReport {
    pub workers: usize,
    pub nodes: u64,
    pub ranges: u64,
    pub clients: usize,
    pub seconds: f64,
    /// Acknowledged puts.
    pub writes: u64,
    /// Puts that failed (each is a bench failure to look into, not load).
    pub errors: u64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
}

impl ThroughputReport {
    pub fn writes_per_sec(&self) -> f64 {
        self.writes as f64 / self.seconds
    }
}

/// Write throughput of a cluster of `nodes` nodes (every range replicated
/// on each) with `workers` raft workers per node: `clients` concurrent
/// tasks, spread over the nodes, each putting 100-byte values into the
/// ranges in turn, every put waiting for its acknowledgement, for
/// `duration`. The WAL keeps its production settings (zero-filled
/// segments), since syncs bound throughput.
pub fn throughput(
    dir: &Path,
    nodes: u64,
    ranges: u64,
    workers: usize,
    clients: usize,
    duration: Duration,
) -> ThroughputReport {
    let network = LocalNetwork::new(1);
    let ids: Vec<u64> = (1..=nodes).collect();
    let cluster: Vec<Node> = ids
        .iter()
        .map(|&id| {
            let (transport, inbox) = network.register(id, 1 << 16);
            let mut options = NodeOptions::new(
                id,
                dir.join(format!("node-{id}")),
                Bootstrap::EvenSplits {
                    count: ranges,
                    nodes: ids.clone(),
                },
            );
            options.workers = workers;
            options.tick_interval = Duration::from_millis(10);
            Node::open(options, Arc::new(transport), inbox)
                .unwrap_or_else(|e| panic!("open node {id}: {e}"))
        })
        .collect();
    let started = Instant::now();
    while cluster.iter().map(|n| n.stats().leaders).sum::<usize>() < ranges as usize {
        assert!(started.elapsed() < Duration::from_secs(120), "no leaders");
        std::thread::sleep(Duration::from_millis(5));
    }
    let dbs: Vec<flotilla::Db> = cluster.iter().map(Node::db).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let (histogram, errors, seconds) = runtime.block_on(async {
        let value = Arc::new(vec![0x5au8; 100]);
        let started = tokio::time::Instant::now();
        let deadline = started + duration;
        let tasks: Vec<_> = (0..clients)
            .map(|client| {
                let db = dbs[client % dbs.len()].clone();
                let value = Arc::clone(&value);
                tokio::spawn(async move {
                    let mut latency = Histogram::<u64>::new(3).expect("histogram");
                    let mut errors = 0u64;
                    let mut i = client as u64;
                    while tokio::time::Instant::now() < deadline {
                        let key = key_in_range(i % ranges, ranges);
                        let put_started = Instant::now();
                        match db.put(&key, &value).await {
                            Ok(()) => {
                                let _ = latency.record(put_started.elapsed().as_micros() as u64);
                            }
                            Err(_) => errors += 1,
                        }
                        i += clients as u64;
                    }
                    (latency, errors)
                })
            })
            .collect();
        let mut histogram = Histogram::<u64>::new(3).expect("histogram");
        let mut errors = 0;
        for task in tasks {
            let (latency, failed) = task.await.unwrap_or_else(|e| panic!("client task: {e}"));
            let _ = histogram.add(&latency);
            errors += failed;
        }
        (histogram, errors, started.elapsed().as_secs_f64())
    });
    drop(runtime);
    for node in cluster {
        node.shutdown();
    }
    drop(network);
    ThroughputReport {
        workers,
        nodes,
        ranges,
        clients,
        seconds,
        writes: histogram.len(),
        errors,
        latency_us_p50: histogram.value_at_quantile(0.5),
        latency_us_p99: histogram.value_at_quantile(0.99),
        latency_us_p999: histogram.value_at_quantile(0.999),
    }
}

/// Counts live heap bytes, so the per-range figure is what the node keeps,
/// not what the allocator happens to hold on to.
pub struct CountingAllocator;

static LIVE_BYTES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Live heap bytes right now.
pub fn live_heap_bytes() -> i64 {
    LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged; only a counter is updated on the side.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as i64 - layout.size() as i64,
            std::sync::atomic::Ordering::Relaxed,
        );
        // SAFETY: same contract as our caller's.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}
