//! `axon-lab` stopped by SIGTERM (or Ctrl-C) mid-run leaves nothing behind: the etcd of a
//! scenario with several controllers is killed and the run's temporary directory removed.
//! The real binary, a real etcd (`scripts/test.sh` installs it).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline).contains(needle).then_some(pid)
        })
        .collect()
}

/// Polls `f` every 100 ms until it holds or `within` passes; whether it held.
fn within(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

#[test]
fn a_lab_stopped_mid_run_kills_its_etcd_and_removes_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("sites.csv"),
        "id,region,provider,lat,lon\na,r1,aws,0,0\nb,r2,gcp,0,10\nc,r3,azure,0,5\n",
    )
    .unwrap();
    std::fs::write(d.join("rtt.csv"), "src,dst,rtt_ms\na,b,100\na,c,20\nb,c,20\n").unwrap();
    std::fs::write(
        d.join("two.toml"),
        "name = \"two\"\n[data]\nsites = \"sites.csv\"\nrtt = \"rtt.csv\"\n\
         [run]\nduration_s = 120\ncontrollers = 2\n",
    )
    .unwrap();
    // The run's own temporary directory goes here, so that its etcd can be told apart.
    let tmp = d.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let needle = tmp.to_str().unwrap().to_string();
    let mut lab = Command::new(env!("CARGO_BIN_EXE_axon-lab"))
        .arg("--scenario")
        .arg(d.join("two.toml"))
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let etcd_up = within(Duration::from_secs(60), || {
        processes_mentioning(&needle).iter().any(|&p| p != lab.id())
    });
    assert!(etcd_up, "the run's etcd never started");
    let status = Command::new("kill")
        .args(["-TERM", &lab.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = within(Duration::from_secs(30), || lab.try_wait().unwrap().is_some());
    assert!(exited, "axon-lab did not stop on SIGTERM");
    let out = lab.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted"), "{stderr}");
    // Nothing of the run is left: no process, no file.
    let left = processes_mentioning(&needle);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let files: Vec<_> = std::fs::read_dir(Path::new(&tmp)).unwrap().collect();
    assert!(files.is_empty(), "files left behind: {files:?}");
}
