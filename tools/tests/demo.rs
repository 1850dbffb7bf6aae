//! `flotilla demo`, the README's main job, run as a user would: it must end
//! with `demo: ok` after killing a node.

use std::process::Command;

#[test]
fn the_demo_survives_a_node_kill_and_verifies_every_write() {
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["demo", "--ranges", "16", "--seconds", "2", "--clients", "8"])
        .output()
        .expect("run flotilla demo");
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().last().unwrap_or_default();
    assert!(output.status.success(), "{text}");
    assert!(last.starts_with("demo: ok"), "{text}");
    assert!(text.contains("killed node"), "{text}");
    assert!(text.contains("every range had a leader again"), "{text}");
}
