//! Nodes as processes, as an operator runs them: `flotilla cert` makes the
//! certificates, `flotilla start` runs each node, clients talk QUIC with
//! mutual TLS, SIGKILL loses no acknowledged write, SIGTERM stops a node
//! cleanly, and a bad setting is named.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tools::demo::{ClusterSettings, ProcessCluster};

fn flotilla() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn wait_for_leaders(cluster: &ProcessCluster, ranges: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match cluster.leaders() {
            Ok(leaders) if leaders >= ranges => return,
            other => assert!(
                Instant::now() < deadline,
                "no leaders for every range: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_node_loses_no_acknowledged_write_and_the_rest_stop_cleanly() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let settings = ClusterSettings {
        nodes: 3,
        ranges: 8,
        tick_ms: 10,
        workers: Some(2),
    };
    let mut cluster =
        ProcessCluster::start(flotilla(), dir.path(), &settings).expect("cluster starts");
    wait_for_leaders(&cluster, 8);
    let runtime = runtime();
    let callers = cluster.callers();
    let db = flotilla::client::RemoteDb::new(callers.clone()).expect("client");

    // Writes through every node; the busiest node dies with SIGKILL while
    // a second batch is being written.
    let mut acknowledged = Vec::new();
    for i in 0..40u32 {
        let key = format!("{:02x}key{i}", (i * 37) % 256).into_bytes();
        runtime
            .block_on(db.put(&key, format!("v{i}").as_bytes()))
            .expect("put before the kill");
        acknowledged.push((key, format!("v{i}").into_bytes()));
    }
    let victim = cluster
        .alive()
        .into_iter()
        .max_by_key(|&id| cluster.status(id).map(|s| s.leaders).unwrap_or(0))
        .expect("a node");
    cluster.kill(victim).expect("kill");
    for i in 40..80u32 {
        let key = format!("{:02x}key{i}", (i * 37) % 256).into_bytes();
        // Writes in flight at the kill may time out (outcome unknown);
        // only the acknowledged ones are checked.
        if runtime
            .block_on(db.put(&key, format!("v{i}").as_bytes()))
            .is_ok()
        {
            acknowledged.push((key, format!("v{i}").into_bytes()));
        }
    }
    assert!(acknowledged.len() > 60, "{} writes", acknowledged.len());
    wait_for_leaders(&cluster, 8);
    for (key, value) in &acknowledged {
        let mut read = runtime.block_on(db.get(key));
        for _ in 0..20 {
            if read.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            read = runtime.block_on(db.get(key));
        }
        assert_eq!(read, Ok(Some(value.clone())), "key {key:?}");
    }
    drop(db);
    drop(callers);
    let problems = cluster.stop();
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn cert_commands_make_what_start_needs_and_a_bad_setting_is_named() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let certs = dir.path().join("certs");
    let run = |args: &[&str]| {
        Command::new(flotilla())
            .args(args)
            .output()
            .expect("run flotilla")
    };
    let certs_arg = certs.to_str().expect("utf-8 path");
    assert!(run(&["cert", "init", certs_arg]).status.success());
    let again = run(&["cert", "init", certs_arg]);
    assert!(!again.status.success(), "a second CA must be refused");
    assert!(run(&[
        "cert",
        "node",
        certs_arg,
        "--id",
        "1",
        "--host",
        "127.0.0.1"
    ])
    .status
    .success());
    for file in ["ca.crt", "ca.key", "node-1.crt", "node-1.key"] {
        assert!(certs.join(file).is_file(), "{file}");
    }

    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "id = 1\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nca = \"{}\"\ncert = \"{}\"\n\
             key = \"{}\"\ntick_ms = 0\n",
            dir.path().join("data").display(),
            certs.join("ca.crt").display(),
            certs.join("node-1.crt").display(),
            certs.join("node-1.key").display(),
        ),
    )
    .expect("write settings");
    let output = run(&["start", "--config", config.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("tick_ms"), "{stderr}");

    // A certificate for another node is refused at start.
    let output = run(&[
        "start",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--tick-ms",
        "10",
        "--id",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("node-1.crt"), "{stderr}");
}
