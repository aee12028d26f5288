//! The `axon-agent` binary: effective config, clear one-line errors, reload on SIGHUP.

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

/// `GET /metrics` on the agent, or `None` while nothing answers.
fn metrics(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn sighup_applies_what_may_change_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let base = format!(
        "site = \"a\"\nnode = \"n1\"\ncontrollers = [\"http://127.0.0.1:9\"]\nhttp_listen = \"{http}\"\n\
         table_file = {:?}\n",
        dir.path().join("table.pb")
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, &base).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_axon-agent"))
        .arg("--config")
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let reloads = |result: &str| -> Option<u64> {
        let series = format!("axon_agent_config_reloads_total{{result=\"{result}\"}} ");
        metrics(http)?
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    let until = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "not within 30 s: {what}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let hup = |child: &std::process::Child| {
        let ok = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    until("the agent serving", &|| reloads("applied") == Some(0));
    std::fs::write(&path, format!("{base}max_route_waiters = 8\n")).unwrap();
    hup(&child);
    until("the limit applied", &|| reloads("applied") == Some(1));
    std::fs::write(&path, base.replace("site = \"a\"", "site = \"b\"")).unwrap();
    hup(&child);
    until("the new site refused", &|| reloads("refused") == Some(1));
    std::fs::write(&path, "not toml at all").unwrap();
    hup(&child);
    until("the broken file refused", &|| reloads("refused") == Some(2));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
