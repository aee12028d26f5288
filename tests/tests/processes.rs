//! The closed loop as separate processes: `axon-controller`, one `axon-prober` and one
//! `axon-agent` per site, on their own 127.0.0.x addresses, probes through the WAN emulator
//! (which runs in this test process). Needs the binaries next to this test's (built by
//! `cargo test --workspace`, as the daemons' own integration tests require them).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesh::{Proc, bin, eventually, http_get};
use wan::{Emulator, EmulatorConfig, LinkParams, Way};

/// A free TCP port on `ip`, for a child process to bind.
fn tcp(ip: &str) -> SocketAddr {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

fn udp(ip: &str) -> SocketAddr {
    std::net::UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap()
}

fn spawn(name: &str, config: &Path) -> Proc {
    let child = Command::new(bin(name))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

fn terminate(p: &mut Proc) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(p.0.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn primary(agent: SocketAddr, to: &str) -> Option<Vec<String>> {
    let (status, v) = http_get(agent, &format!("/v1/routes/{to}")).await;
    (status == 200).then(|| {
        v["route"]["primary"]["sites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_close_the_loop_and_agents_outlive_the_controller() {
    let dir = tempfile::tempdir().unwrap();
    let sites = [
        ("a", "r1", "127.0.0.11"),
        ("b", "r2", "127.0.0.12"),
        ("c", "r3", "127.0.0.13"),
    ];
    prober::tls::generate_mesh(dir.path(), &["a", "b", "c"]).unwrap();
    let rtt = |x: &str, y: &str| {
        if (x, y) == ("a", "b") || (x, y) == ("b", "a") {
            100
        } else {
            20
        }
    };

    // The controller on 127.0.0.10.
    let grpc = tcp("127.0.0.10");
    let mut toml = format!(
        "grpc_listen = \"{grpc}\"\nhttp_listen = \"{}\"\ntick_ms = 200\n\n[links]\ndown_after = 2\n\n[guardrails]\nmin_active_regions = 1\n\n",
        tcp("127.0.0.10")
    );
    for (id, region, _) in sites {
        toml += &format!("[[sites]]\nid = \"{id}\"\nregion = \"{region}\"\n\n");
    }
    let ctl_cfg = dir.path().join("controller.toml");
    std::fs::write(&ctl_cfg, toml).unwrap();
    let mut controller = spawn("axon-controller", &ctl_cfg);

    // Probers on their own addresses, each peer reached through an emulated link.
    let emu = Emulator::new(EmulatorConfig::default()).unwrap();
    let addrs: Vec<SocketAddr> = sites.iter().map(|(_, _, ip)| udp(ip)).collect();
    let mut pipes = std::collections::HashMap::new();
    for (i, (a, _, _)) in sites.iter().enumerate() {
        for (j, (b, _, _)) in sites.iter().enumerate() {
            if i != j {
                let half = LinkParams::delay(Duration::from_millis(rtt(a, b)) / 2);
                pipes.insert((*a, *b), emu.pipe(addrs[j], half.clone(), half).unwrap());
            }
        }
    }
    let mut probers = Vec::new();
    let mut agents = Vec::new();
    let mut agent_addrs = std::collections::HashMap::new();
    for (i, (id, _, ip)) in sites.iter().enumerate() {
        let files = prober::tls::mesh_files(dir.path(), id);
        let mut cfg = format!(
            "site = \"{id}\"\nlisten = \"{}\"\nmetrics_listen = \"{}\"\nwindow_ms = 500\nredial_min_ms = 50\nredial_max_ms = 500\n\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\n[report]\nendpoints = [\"http://{grpc}\"]\nbackoff_min_ms = 50\nbackoff_max_ms = 500\n\n",
            addrs[i],
            tcp(ip),
            files.ca,
            files.cert,
            files.key
        );
        for (peer, _, _) in sites.iter().filter(|(p, _, _)| p != id) {
            cfg += &format!(
                "[[peers]]\nsite = \"{peer}\"\naddr = \"{}\"\n\n",
                pipes[&(*id, *peer)].front_addr()
            );
        }
        let path = dir.path().join(format!("prober-{id}.toml"));
        std::fs::write(&path, cfg).unwrap();
        probers.push(spawn("axon-prober", &path));

        let http = tcp(ip);
        agent_addrs.insert(*id, http);
        let cfg = format!(
            "node = \"{id}-1\"\nsite = \"{id}\"\ncontrollers = [\"http://{grpc}\"]\ntable_file = {:?}\nhttp_listen = \"{http}\"\nbackoff_min_ms = 50\nbackoff_max_ms = 500\n",
            dir.path().join(format!("agent-{id}.pb"))
        );
        let path = dir.path().join(format!("agent-{id}.toml"));
        std::fs::write(&path, cfg).unwrap();
        agents.push(spawn("axon-agent", &path));
    }
    let a = agent_addrs["a"];

    // The relay path reaches agent a's process.
    eventually(Duration::from_secs(60), "agent a to hold a → c → b", || async {
        (primary(a, "b").await? == ["a", "c", "b"]).then_some(())
    })
    .await;

    // A blackhole between c and b (both pipes: the pair shares the connection one of them
    // dialled): agent a leaves it.
    let t0 = Instant::now();
    for pipe in [&pipes[&("c", "b")], &pipes[&("b", "c")]] {
        for way in [Way::Forward, Way::Backward] {
            pipe.set(
                way,
                LinkParams {
                    blackhole: true,
                    ..pipe.params(way)
                },
            )
            .unwrap();
        }
    }
    eventually(Duration::from_secs(30), "agent a to avoid c → b", || async {
        let p = primary(a, "b").await?;
        (!p.windows(2).any(|w| w[0] == "c" && w[1] == "b")).then_some(())
    })
    .await;
    println!(
        "processes: blackhole c→b applied by agent a after {:?}",
        t0.elapsed()
    );

    // The controller stops (SIGTERM, graceful); agent a keeps serving, then restarts and
    // serves its last-known-good table.
    terminate(&mut controller);
    // A table already on the wire may still land: read the version once the agent has seen
    // its stream end, when nothing more can reach it.
    let held = eventually(
        Duration::from_secs(20),
        "agent a sees the controller gone",
        || async {
            let (_, v) = http_get(a, "/v1/routes").await;
            (v["controller_connected"] == false).then(|| v["version"].as_u64().unwrap())
        },
    )
    .await;
    terminate(&mut agents[0]);
    agents[0] = spawn("axon-agent", &dir.path().join("agent-a.toml"));
    let v = eventually(
        Duration::from_secs(20),
        "the restarted agent to serve",
        || async {
            let (status, v) = http_get(a, "/v1/routes/b").await;
            (status == 200).then_some(v)
        },
    )
    .await;
    assert_eq!(v["source"], "last-known-good");
    assert_eq!(v["version"].as_u64().unwrap(), held);
    drop(agents);
    drop(probers);
}
