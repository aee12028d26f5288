//! The deployment files in `deploy/` against the real daemons and a real Prometheus:
//! - the example configurations are what the daemons accept (`--check-config`);
//! - the systemd units start the daemons with flags they accept (and `systemd-analyze verify`
//!   finds nothing to say, where it is installed);
//! - the Kubernetes manifests agree with the configurations: commands, flags, ports, config
//!   maps, scrape annotations;
//! - `promtool` accepts the Prometheus configuration and rules, and the alerts' unit tests pass;
//! - a real Prometheus scraping a real mesh (controller, probers through the WAN emulator,
//!   agents) loads the rules, finds every metric they and the Grafana dashboard name, answers
//!   every dashboard query with data, keeps every alert quiet on the healthy mesh, and sees a
//!   cut link in the alert meant for it.
//!
//! Needs `prometheus` and `promtool` (Debian's `prometheus`; `scripts/test.sh` installs it) and
//! the daemons' binaries next to this test's (built by `cargo test --workspace`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mesh::{Mesh, Proc, bin, eventually, four_sites, relay_rtt};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

/// `deploy/` in the workspace.
fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(rel: &str) -> String {
    let path = deploy().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a command; (success, stdout and stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/test.sh installs what the tests need)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `argv` (a daemon's command line as a deployment file writes it) with its paths moved
/// into the workspace, plus `--check-config`: whether the daemon would start.
fn check_command_line(argv: &[String]) -> (bool, String) {
    let name = Path::new(&argv[0]).file_name().unwrap().to_str().unwrap();
    let args: Vec<String> = argv[1..]
        .iter()
        .filter(|a| !a.starts_with('$') && *a != "--check-config")
        .map(|a| {
            a.replace("/etc/axon/", &format!("{}/config/", deploy().display()))
                .replace("$(POD_NAME)", "axon-controller-0")
                .replace("$(NODE_NAME)", "node-1")
        })
        .collect();
    let mut cmd = Command::new(bin(name));
    cmd.args(&args).arg("--check-config");
    let (ok, text) = run(&mut cmd);
    (ok, format!("{name} {}: {text}", args.join(" ")))
}

#[test]
fn the_example_configurations_are_what_the_daemons_accept() {
    for daemon in ["controller", "agent", "prober"] {
        let config = deploy().join(format!("config/{daemon}.toml"));
        let (ok, text) = check_command_line(&[
            format!("axon-{daemon}"),
            "--config".into(),
            config.display().to_string(),
        ]);
        assert!(ok, "{text}");
        assert!(text.contains("configuration ok"), "{text}");
    }
    // The check can fail: a config naming no site is refused, with the reason.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("agent.toml");
    std::fs::write(
        &broken,
        read("config/agent.toml").replace("site = \"aws-us-east-1\"", ""),
    )
    .unwrap();
    let (ok, text) = check_command_line(&[
        "axon-agent".into(),
        "--config".into(),
        broken.display().to_string(),
    ]);
    assert!(!ok && text.contains("site"), "{text}");
}

/// A unit's `Exec*=` command lines, split on whitespace (the units quote nothing).
fn exec_lines(unit: &str) -> Vec<(String, Vec<String>)> {
    unit.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("ExecStart") || k.starts_with("ExecReload"))
        .map(|(k, v)| (k.to_string(), v.split_whitespace().map(String::from).collect()))
        .collect()
}

#[test]
fn systemd_units_start_the_daemons_with_flags_they_accept() {
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for daemon in ["controller", "agent", "prober"] {
        let name = format!("axon-{daemon}.service");
        let unit = read(&format!("systemd/{name}"));
        let lines = exec_lines(&unit);
        let kinds: Vec<&str> = lines.iter().map(|(k, _)| k.as_str()).collect();
        // Every daemon reloads on SIGHUP (the controller its tunables, the prober its peers
        // and certificates, the agent its controllers and limits), after checking the file.
        let want = ["ExecStartPre", "ExecStart", "ExecReload", "ExecReload"];
        assert_eq!(kinds, want, "{name}");
        assert_eq!(lines[3].1, ["/bin/kill", "-HUP", "$MAINPID"], "{name}");
        for (_, argv) in lines.iter().filter(|(_, argv)| argv[0] != "/bin/kill") {
            assert_eq!(argv[0], format!("/usr/local/bin/axon-{daemon}"), "{name}");
            assert!(
                argv.contains(&format!("/etc/axon/{daemon}.toml")),
                "{name}: {argv:?}"
            );
            let (ok, text) = check_command_line(argv);
            assert!(ok, "{name}: {text}");
        }
        // The same unit, pointing at the built binary, for systemd's own check.
        let local = dir.path().join(&name);
        let exe = bin(&format!("axon-{daemon}"));
        let text = unit.replace(
            &format!("/usr/local/bin/axon-{daemon}"),
            &exe.display().to_string(),
        );
        std::fs::write(&local, text).unwrap();
        units.push(local);
    }
    // systemd-analyze reports unknown keys and bad values as warnings, with exit status 0.
    if Command::new("systemd-analyze").arg("--version").output().is_ok() {
        let (ok, text) = run(Command::new("systemd-analyze")
            .arg("verify")
            .arg("--man=no")
            .args(&units));
        let about_units: Vec<&str> = text.lines().filter(|l| l.contains(".service")).collect();
        assert!(ok && about_units.is_empty(), "systemd-analyze verify:\n{text}");
    } else {
        eprintln!("systemd-analyze is not installed: the units' syntax is not checked by systemd");
    }
}

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| v.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// A daemon's ports by container port name, and the one Prometheus scrapes.
type Listens = (Vec<(&'static str, i64)>, i64);

/// The port of a `SocketAddr` in a config.
fn port(a: SocketAddr) -> i64 {
    i64::from(a.port())
}

#[test]
fn kubernetes_manifests_agree_with_the_configurations() {
    let controller = controller::ControllerConfig::from_toml(&read("config/controller.toml")).unwrap();
    let agent = agent::AgentConfig::from_toml(&read("config/agent.toml")).unwrap();
    let prober = prober::ProberConfig::from_toml(&read("config/prober.toml")).unwrap();
    // Per daemon: the ports its configuration listens on, by the container port's name, and
    // the one Prometheus scrapes.
    let expected: HashMap<&str, Listens> = HashMap::from([
        (
            "axon-controller",
            (
                vec![
                    ("grpc", port(controller.grpc_listen)),
                    ("http", port(controller.http_listen)),
                ],
                port(controller.http_listen),
            ),
        ),
        (
            "axon-agent",
            (
                vec![
                    ("api", port(agent.http_listen)),
                    ("metrics", port(agent.metrics_listen.unwrap())),
                ],
                port(agent.metrics_listen.unwrap()),
            ),
        ),
        (
            "axon-prober",
            (
                vec![
                    ("quic", port(prober.listen)),
                    ("metrics", port(prober.metrics_listen.unwrap())),
                ],
                port(prober.metrics_listen.unwrap()),
            ),
        ),
    ]);

    // Per daemon: the files its configuration writes. The containers' root filesystems are
    // read-only, so each must be on a writable volume.
    let written: HashMap<&str, Vec<PathBuf>> = HashMap::from([
        (
            "axon-controller",
            [&controller.store.journal, &controller.store.snapshot]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
        ),
        ("axon-agent", vec![agent.table_file.clone()]),
        ("axon-prober", Vec::new()),
    ]);
    assert!(
        controller.store.journal.is_some(),
        "the example keeps the journal across restarts"
    );
    // Per daemon: the files its configuration reads (certificates, keys, etcd's password),
    // each of which must be on a mounted volume.
    let tls_files = |t: &proto::auth::TlsFiles| vec![t.ca.clone(), t.cert.clone(), t.key.clone()];
    let mut controller_reads: Vec<PathBuf> = controller.tls.as_ref().map(tls_files).unwrap_or_default();
    if let Some(t) = &controller.store.etcd_tls {
        controller_reads.extend(
            [Some(&t.ca), t.cert.as_ref(), t.key.as_ref()]
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    controller_reads.extend(controller.store.etcd_password_file.clone());
    assert!(
        controller.store.etcd_tls.is_some(),
        "the example reaches etcd over TLS"
    );
    let reads: HashMap<&str, Vec<PathBuf>> = HashMap::from([
        ("axon-controller", controller_reads),
        (
            "axon-agent",
            agent.tls.as_ref().map(tls_files).unwrap_or_default(),
        ),
        ("axon-prober", tls_files(&prober.tls)),
    ]);

    let kustomization = &yaml_docs("kustomization.yaml")[0];
    let resources = strings(&kustomization["resources"]);
    let generated: HashMap<String, Vec<String>> = kustomization["configMapGenerator"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|g| (g["name"].as_str().unwrap().to_string(), strings(&g["files"])))
        .collect();
    let mut workloads = BTreeSet::new();
    for entry in std::fs::read_dir(deploy().join("kubernetes")).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        let rel = format!("kubernetes/{file}");
        let docs = yaml_docs(&rel);
        assert!(!docs.is_empty(), "{rel}");
        for doc in &docs {
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{rel}: a document without kind"));
            assert!(
                doc["apiVersion"].as_str().is_some(),
                "{rel}: {kind} without apiVersion"
            );
            assert!(
                doc["metadata"]["name"].as_str().is_some(),
                "{rel}: {kind} without a name"
            );
            // The Prometheus Operator's resources need its CRDs: applied on their own.
            let operator = doc["apiVersion"]
                .as_str()
                .unwrap()
                .starts_with("monitoring.coreos.com/");
            assert_eq!(
                resources.contains(&rel),
                !operator,
                "{rel} in kustomization.yaml's resources"
            );
            if !matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet") {
                continue;
            }
            let pod = &doc["spec"]["template"];
            let app = pod["metadata"]["labels"]["app.kubernetes.io/name"]
                .as_str()
                .unwrap();
            let selector = &doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"];
            assert_eq!(
                selector.as_str(),
                Some(app),
                "{rel}: the selector matches the pod"
            );
            let (ports, scraped) = &expected[app];
            let annotations = &pod["metadata"]["annotations"];
            assert_eq!(
                annotations["prometheus.io/scrape"].as_str(),
                Some("true"),
                "{rel}"
            );
            assert_eq!(
                annotations["prometheus.io/port"].as_str(),
                Some(scraped.to_string().as_str()),
                "{rel}: Prometheus scrapes the metrics port"
            );
            let container = &pod["spec"]["containers"][0];
            let mut argv = strings(&container["command"]);
            assert_eq!(argv, [app], "{rel}: the container runs {app}");
            argv.extend(strings(&container["args"]));
            let (ok, text) = check_command_line(&argv);
            assert!(ok, "{rel}: {text}");
            let declared: Vec<(String, i64)> = container["ports"]
                .as_vec()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap().to_string(),
                        p["containerPort"].as_i64().unwrap(),
                    )
                })
                .collect();
            for (name, want) in ports {
                assert!(
                    declared.contains(&(name.to_string(), *want)),
                    "{rel}: port {name} should be {want} as in the configuration, declared {declared:?}"
                );
            }
            // The config map mounted is generated from the configuration file it is read as.
            let daemon = app.trim_start_matches("axon-");
            let map = pod["spec"]["volumes"]
                .as_vec()
                .unwrap()
                .iter()
                .find_map(|v| v["configMap"]["name"].as_str())
                .unwrap();
            assert_eq!(
                generated.get(map),
                Some(&vec![format!("config/{daemon}.toml")]),
                "{rel}: config map {map}"
            );
            let mounts = container["volumeMounts"].as_vec().unwrap();
            assert!(
                mounts.iter().any(|m| {
                    m["mountPath"].as_str() == Some(&format!("/etc/axon/{daemon}.toml"))
                        && m["subPath"].as_str() == Some(&format!("{daemon}.toml"))
                }),
                "{rel}: the config is mounted where --config reads it"
            );
            let claims: Vec<&str> = doc["spec"]["volumeClaimTemplates"]
                .as_vec()
                .map(|v| v.iter().filter_map(|c| c["metadata"]["name"].as_str()).collect())
                .unwrap_or_default();
            let volumes: Vec<&str> = pod["spec"]["volumes"]
                .as_vec()
                .unwrap()
                .iter()
                .filter_map(|v| v["name"].as_str())
                .chain(claims)
                .collect();
            for file in &reads[app] {
                let held = mounts.iter().any(|m| {
                    let at = m["mountPath"].as_str().unwrap();
                    file.starts_with(at) && volumes.contains(&m["name"].as_str().unwrap())
                });
                assert!(held, "{rel}: {} is read, but no volume holds it", file.display());
            }
            for file in &written[app] {
                let holder = mounts
                    .iter()
                    .filter(|m| file.starts_with(m["mountPath"].as_str().unwrap()))
                    .max_by_key(|m| m["mountPath"].as_str().unwrap().len());
                let holder = holder.unwrap_or_else(|| {
                    panic!(
                        "{rel}: {} is written, but no volume holds it (the root filesystem is read-only)",
                        file.display()
                    )
                });
                assert_ne!(
                    holder["readOnly"].as_bool(),
                    Some(true),
                    "{rel}: {} is written to a read-only mount",
                    file.display()
                );
                let name = holder["name"].as_str().unwrap();
                assert!(
                    volumes.contains(&name),
                    "{rel}: mount {name} has no volume or claim"
                );
            }
            workloads.insert(app.to_string());
        }
    }
    assert_eq!(workloads.len(), 3, "every daemon has a workload: {workloads:?}");
}

#[test]
fn the_example_scrape_targets_name_the_configured_sites_and_ports() {
    let controller = controller::ControllerConfig::from_toml(&read("config/controller.toml")).unwrap();
    let sites: BTreeSet<String> = controller.sites.iter().map(|s| s.id.clone()).collect();
    let ports = [
        ("controller", None, port(controller.http_listen)),
        (
            "prober",
            Some(()),
            port(
                prober::ProberConfig::from_toml(&read("config/prober.toml"))
                    .unwrap()
                    .metrics_listen
                    .unwrap(),
            ),
        ),
        (
            "agent",
            Some(()),
            port(
                agent::AgentConfig::from_toml(&read("config/agent.toml"))
                    .unwrap()
                    .metrics_listen
                    .unwrap(),
            ),
        ),
    ];
    for (daemon, labelled, want) in ports {
        let rel = format!("prometheus/targets/{daemon}.yml");
        let groups = yaml_docs(&rel);
        let mut seen = BTreeSet::new();
        for group in groups[0].as_vec().unwrap() {
            for t in strings(&group["targets"]) {
                let addr: SocketAddr = t.parse().unwrap_or_else(|e| panic!("{rel}: {t}: {e}"));
                assert_eq!(port(addr), want, "{rel}: {t} is not the configured metrics port");
            }
            if labelled.is_some() {
                let site = group["labels"]["site"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{rel}: a group without site"));
                seen.insert(site.to_string());
            }
        }
        if labelled.is_some() {
            assert_eq!(seen, sites, "{rel}: one group per configured site");
        }
    }
}

#[test]
fn promtool_accepts_the_configuration_and_rules_and_the_alert_tests_pass() {
    let prom = deploy().join("prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "rules/axon.yml"],
        vec!["test", "rules", "tests/axon_test.yml"],
    ] {
        let (ok, text) = run(Command::new("promtool").args(&args).current_dir(&prom));
        assert!(ok, "promtool {}:\n{text}", args.join(" "));
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET from Prometheus's API: (status, JSON). HTTP/1.0, so that a long answer comes whole
/// rather than chunked.
async fn prom_get(prom: SocketAddr, path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(prom).await else {
        return (0, Value::Null);
    };
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.into())),
    )
}

/// An instant query: the result vector, or the error Prometheus gave.
async fn query(prom: SocketAddr, expr: &str) -> Result<Vec<Value>, String> {
    let (status, v) = prom_get(prom, &format!("/api/v1/query?query={}", encode(expr))).await;
    if status != 200 || v["status"] != "success" {
        return Err(format!("{status}: {v}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Every expression of the dashboard, with Grafana's variables set as for "All sites".
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(&read("grafana/dashboards/axon-mesh.json")).unwrap();
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().to_string();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids are unique: {title}"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{title} fits the dashboard's 24 columns");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title} uses the datasource variable"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has a query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let expr = expr.replace("$__rate_interval", "15s").replace("$site", ".*");
            assert!(!expr.contains('$'), "{title}: an unknown variable in {expr}");
            out.push((title.clone(), expr));
        }
    }
    out
}

/// The dashboard's annotations (events marked on every panel): name and expression. Each
/// reads the datasource variable and no other.
fn dashboard_annotations() -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(&read("grafana/dashboards/axon-mesh.json")).unwrap();
    let mut out = Vec::new();
    for a in dash["annotations"]["list"].as_array().unwrap() {
        if a["builtIn"] == 1 {
            continue;
        }
        let name = a["name"].as_str().unwrap().to_string();
        assert_eq!(
            a["datasource"]["uid"], "${datasource}",
            "{name} uses the datasource variable"
        );
        let expr = a["expr"].as_str().unwrap().to_string();
        assert!(!expr.contains('$'), "{name}: a variable in {expr}");
        out.push((name, expr));
    }
    out
}

/// The metric names an expression reads (Axon's and the process metrics).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_')
            && (i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':'));
        if !starts {
            i += 1;
            continue;
        }
        let end = (i..bytes.len())
            .find(|&j| !(bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b':'))
            .unwrap_or(bytes.len());
        let word = &expr[i..end];
        if word.starts_with("axon_") || word.starts_with("axon:") || word.starts_with("process_") {
            names.insert(word.to_string());
        }
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_mesh_answers_every_dashboard_query_and_alerts_on_a_cut_link() {
    let mesh = Mesh::start(four_sites(), relay_rtt).await;
    let controller = mesh.controller.as_ref().unwrap();

    // Prometheus with deploy/'s configuration and rules, at one-second intervals, its file
    // targets written for this mesh.
    let dir = tempfile::tempdir().unwrap();
    let config = read("prometheus/prometheus.yml")
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/axon.yml"),
        read("prometheus/rules/axon.yml"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("targets")).unwrap();
    let target = |addr: SocketAddr, site: Option<&str>| match site {
        Some(s) => format!("- targets: [\"{addr}\"]\n  labels: {{site: {s}}}\n"),
        None => format!("- targets: [\"{addr}\"]\n"),
    };
    std::fs::write(
        dir.path().join("targets/controller.yml"),
        target(controller.http_addr, None),
    )
    .unwrap();
    let (mut probers, mut agents) = (String::new(), String::new());
    for s in &mesh.sites {
        probers += &target(mesh.probers[s.id].metrics_addr.unwrap(), Some(s.id));
        agents += &target(mesh.agents[s.id].metrics_addr.unwrap(), Some(s.id));
    }
    std::fs::write(dir.path().join("targets/prober.yml"), probers).unwrap();
    std::fs::write(dir.path().join("targets/agent.yml"), agents).unwrap();
    let prom: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Proc(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's `prometheus`; scripts/test.sh installs it)"),
    );
    let log_path = dir.path().join("prometheus.log");
    let log = move || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Every target up: one controller, a prober and an agent per site.
    let targets = 1 + 2 * mesh.sites.len();
    eventually(Duration::from_secs(60), "every target scraped", || async {
        let up = query(prom, "up == 1").await.ok()?;
        (up.len() == targets).then_some(())
    })
    .await;

    // An agent's metrics listener serves operations only: the media server's API (which takes
    // load reports) stays on loopback.
    let agent = &mesh.agents["a"];
    let metrics = agent.metrics_addr.unwrap();
    assert_ne!(Some(metrics), Some(agent.http_addr));
    eventually(Duration::from_secs(60), "agent a holds a table", || async {
        (mesh::http_get(agent.http_addr, "/v1/routes").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(mesh::http_get(metrics, "/v1/routes").await.0, 404);
    assert_eq!(mesh::http_get(metrics, "/healthz").await.0, 200);
    assert_eq!(mesh::http_get(metrics, "/readyz").await.0, 200);

    // Every rule loaded, and every metric a rule or panel reads is one the daemons export.
    let (_, rules) = prom_get(prom, "/api/v1/rules").await;
    let mut alerts = Vec::new();
    let mut recorded = BTreeSet::new();
    let mut read_by_rules = BTreeSet::new();
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
            let expr = rule["query"].as_str().unwrap().to_string();
            read_by_rules.extend(metric_names(&expr));
            match rule["type"].as_str().unwrap() {
                "recording" => {
                    recorded.insert(rule["name"].as_str().unwrap().to_string());
                }
                _ => alerts.push((rule["name"].as_str().unwrap().to_string(), expr)),
            }
        }
    }
    assert!(
        alerts.len() >= 20 && recorded.len() >= 7,
        "rules not loaded:\n{}",
        log()
    );
    let panels = dashboard_queries();
    let (_, names) = prom_get(prom, "/api/v1/label/__name__/values").await;
    let exported: BTreeSet<String> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    let annotations = dashboard_annotations();
    assert!(annotations.len() >= 4, "{annotations:?}");
    let read_by_panels: BTreeSet<String> = panels
        .iter()
        .chain(&annotations)
        .flat_map(|(_, e)| metric_names(e))
        .collect();
    for name in read_by_rules.iter().chain(&read_by_panels) {
        let known = if name.contains(':') {
            recorded.contains(name)
        } else {
            exported.contains(name)
        };
        assert!(
            known,
            "{name} is read by a rule or panel but nothing exports or records it"
        );
    }
    // The dashboard's site variable lists every prober site.
    let (_, sites) = prom_get(prom, "/api/v1/label/site/values?match[]=axon_probes_sent_total").await;
    assert_eq!(
        sites["data"].as_array().map(Vec::len),
        Some(mesh.sites.len()),
        "{sites}"
    );

    // Every panel's query answers with data once rates have two samples and the recording
    // rules have run.
    for (title, expr) in &panels {
        eventually(
            Duration::from_secs(60),
            &format!("panel {title}: {expr}"),
            || async {
                match query(prom, expr).await {
                    Ok(r) if !r.is_empty() => Some(()),
                    Ok(_) => None,
                    Err(e) => panic!("panel {title}: {expr}: {e}"),
                }
            },
        )
        .await;
    }

    // The healthy mesh: every alert's condition is false at once (their `for` aside). Rate
    // windows of minutes would still hold the mesh's start (the CPU of starting every part on
    // a small machine, read as late probe sends) after the test's deadline: at this
    // Prometheus's one-second intervals, twenty seconds stand for them.
    let alerts: Vec<(String, String)> = alerts
        .into_iter()
        .map(|(name, expr)| {
            let short = ["[1m]", "[2m]", "[5m]", "[10m]", "[30m]"]
                .iter()
                .fold(expr, |e, w| e.replace(w, "[20s]"));
            (name, short)
        })
        .collect();
    eventually(
        Duration::from_secs(60),
        "every alert quiet on the healthy mesh",
        || async {
            let mut firing = Vec::new();
            for (name, expr) in &alerts {
                let r = query(prom, expr).await.unwrap_or_else(|e| panic!("{name}: {e}"));
                if !r.is_empty() {
                    firing.push(format!("{name}: {r:?}"));
                }
            }
            if !firing.is_empty() && std::env::var("AXON_TEST_TIMING").is_ok() {
                eprintln!("still true: {firing:?}");
            }
            firing.is_empty().then_some(())
        },
    )
    .await;

    // Cut a↔b: the alert for a peer that stops answering sees exactly that link, both ways,
    // and the dashboard counts the links down.
    mesh.blackhole("a", "b", true);
    let (_, peer_down) = alerts.iter().find(|(n, _)| n == "AxonPeerDown").unwrap();
    eventually(Duration::from_secs(60), "AxonPeerDown for a↔b", || async {
        let r = query(prom, peer_down).await.ok()?;
        let links: BTreeSet<(String, String)> = r
            .iter()
            .map(|s| {
                let m = &s["metric"];
                (
                    m["site"].as_str().unwrap().to_string(),
                    m["peer"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want = BTreeSet::from([
            ("a".to_string(), "b".to_string()),
            ("b".to_string(), "a".to_string()),
        ]);
        (links == want).then_some(())
    })
    .await;
    // Every annotation's query is one Prometheus answers; the lost link is marked.
    for (name, expr) in &annotations {
        query(prom, expr)
            .await
            .unwrap_or_else(|e| panic!("annotation {name}: {expr}: {e}"));
    }
    let (_, lost) = annotations.iter().find(|(n, _)| n == "Links lost").unwrap();
    eventually(Duration::from_secs(60), "the lost link annotated", || async {
        let r = query(prom, lost).await.ok()?;
        let marked: BTreeSet<String> = r
            .iter()
            .filter_map(|s| {
                Some(format!(
                    "{}>{}",
                    s["metric"]["site"].as_str()?,
                    s["metric"]["peer"].as_str()?
                ))
            })
            .collect();
        (marked == BTreeSet::from(["a>b".to_string(), "b>a".to_string()])).then_some(())
    })
    .await;
    eventually(Duration::from_secs(60), "links down on the dashboard", || async {
        let r = query(prom, "axon:links:leader{health=\"down\"}").await.ok()?;
        let down: f64 = r.first()?["value"][1].as_str()?.parse().ok()?;
        (down >= 2.0).then_some(())
    })
    .await;
    mesh.shutdown().await;
}
