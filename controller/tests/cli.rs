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

/// `GET path` on a loopback HTTP server: the status line and body, or `None` when nothing
/// answers.
fn get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Polls `f` every 50 ms until it holds, or panics after 30 s.
fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "not within 30 s: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

#[test]
fn sighup_reloads_the_tunables_and_keeps_the_config_in_force_when_the_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let base = format!(
        "grpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"{http}\"\n\
         [[sites]]\nid = \"a\"\nregion = \"r1\"\n[[sites]]\nid = \"b\"\nregion = \"r2\"\n"
    );
    let path = dir.path().join("controller.toml");
    std::fs::write(&path, &base).unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_axon-controller"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let metric = |result: &str| -> Option<u64> {
        let m = get(http, "/metrics")?;
        let series = format!("axon_controller_config_reloads_total{{result=\"{result}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    until("the controller serving metrics", || metric("applied") == Some(0));

    // A tunable: applied, the sections named in the log.
    std::fs::write(&path, format!("{base}[engine.hysteresis]\nswitch_after = 5\n")).unwrap();
    signal(&child, "-HUP");
    until("the reload applied", || metric("applied") == Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("configuration reloaded") && l.contains("engine")),
        "{text}"
    );
    // What needs a restart, then a file that does not parse: refused, still serving.
    std::fs::write(&path, base.replace("127.0.0.1:0", "127.0.0.1:1")).unwrap();
    signal(&child, "-HUP");
    until("the restart-only change refused", || metric("refused") == Some(1));
    std::fs::write(&path, "this is not toml").unwrap();
    signal(&child, "-HUP");
    until("the broken file refused", || metric("refused") == Some(2));
    assert_eq!(metric("applied"), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("grpc_listen cannot change without a restart"),
        "{text}"
    );
    assert!(child.try_wait().unwrap().is_none(), "still running");

    signal(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
