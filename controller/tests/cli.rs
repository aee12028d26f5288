//! The `axon-controller` binary: effective config, clear one-line errors.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;

#[test]
fn print_config_shows_every_default_and_flags_override_them() {
    let out = Command::new(env!("CARGO_BIN_EXE_axon-controller"))
        .args(["--print-config", "--grpc-listen", "127.0.0.9:7777"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let cfg = controller::ControllerConfig::from_toml(&text).unwrap();
    assert_eq!(cfg.grpc_listen.to_string(), "127.0.0.9:7777");
    assert_eq!(cfg.tick_ms, 1_000);
    assert!(
        text.contains("[guardrails]") && text.contains("max_drained_fraction"),
        "{text}"
    );
}

/// Starts the controller on `config`, expects it to refuse (exit code 1), returns its stderr.
fn refused(config: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_axon-controller"))
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn a_bad_config_is_one_line_and_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "tick_ms = 100\nmystery = 1\n").unwrap();
    let err = refused(&path);
    assert!(
        err.starts_with("axon-controller: ") && err.contains("mystery"),
        "{err}"
    );
    let missing = dir.path().join("missing.toml");
    let err = refused(&missing);
    let line = format!("axon-controller: reading {}: ", missing.display());
    assert!(
        err.starts_with(&line) && err.lines().count() == 1 && err.matches("os error").count() == 1,
        "one line, the file and the system's reason once: {err}"
    );
    std::fs::write(&path, "tick_ms = 100\n").unwrap();
    assert!(refused(&path).contains("inventory is empty"));
}
