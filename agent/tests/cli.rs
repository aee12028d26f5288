//! The `axon-agent` binary: effective config, clear one-line errors.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;

#[test]
fn print_config_reflects_flags_and_a_missing_site_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_axon-agent"))
        .args([
            "--print-config",
            "--site",
            "aws-use1",
            "--controller",
            "http://127.0.0.2:7500",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let cfg = agent::AgentConfig::from_toml(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(cfg.site, "aws-use1");
    assert_eq!(cfg.controllers, ["http://127.0.0.2:7500"]);

    let out = Command::new(env!("CARGO_BIN_EXE_axon-agent"))
        .args(["--site", ""])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("axon-agent: ") && err.contains("site"), "{err}");
}
