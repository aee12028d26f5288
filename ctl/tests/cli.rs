//! The real `axonctl` binary against a controller on loopback: output, exit codes, waiting.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use mesh::{Mesh, agent_config, controller_config, endpoint, eventually, four_sites, relay_rtt};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

async fn axonctl(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_axonctl"))
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axonctl_speaks_tables_json_and_exit_codes() {
    let sites = four_sites();
    let c = controller::start(controller_config(&sites, None)).await.unwrap();
    let url = endpoint(&c);
    let dir = tempfile::tempdir().unwrap();
    let b = agent::start(agent_config(dir.path(), "b", vec![url.clone()]))
        .await
        .unwrap();

    let (code, out, _) = axonctl(&["-c", &url, "sites"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("SITE") && out.contains("r3"), "{out}");

    let (code, out, _) = axonctl(&["-c", &url, "status", "-o", "json"]).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sites"], 4);
    // The table in force, with when it was computed.
    let out = mesh::eventually(
        std::time::Duration::from_secs(20),
        "a table in `status`",
        || async {
            let (_, out, _) = axonctl(&["-c", &url, "status"]).await;
            out.lines()
                .any(|l| l.starts_with("table ") && l.contains(" UTC (") && l.ends_with(" s ago)"))
                .then_some(out)
        },
    )
    .await;
    assert!(out.contains("computed 20"), "{out}");

    // The load b's media server reports shows per node and per site.
    let (code, _) = mesh::http_request(
        b.http_addr,
        "PUT",
        "/v1/status",
        r#"{"sessions": 7, "load": 0.5}"#,
    )
    .await;
    assert_eq!(code, 200);
    let out = mesh::eventually(
        std::time::Duration::from_secs(20),
        "b's load in `status --agents`",
        || async {
            let (_, out, _) = axonctl(&["-c", &url, "status", "--agents"]).await;
            out.lines()
                .any(|l| l.starts_with("b-node") && l.contains(" 7 ") && l.contains("50%"))
                .then_some(out)
        },
    )
    .await;
    assert!(out.contains("SESSIONS") && out.contains("LOAD"), "{out}");
    let (code, out, _) = axonctl(&["-c", &url, "sites"]).await;
    assert_eq!(code, 0);
    let b_line: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("b "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        b_line[b_line.len() - 3..],
        ["1", "7", "50%"],
        "NODES SESSIONS LOAD of b:\n{out}"
    );

    // A guardrail refusal: exit 3 and the rule in one line.
    let (code, _, err) = axonctl(&["-c", &url, "drain", "site", "a", "--reason", "test"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("last_healthy_site_in_region"), "{err}");

    // A drain waits for the agents, then shows in `drains`.
    let (code, out, err) = axonctl(&[
        "-c",
        &url,
        "-o",
        "json",
        "drain",
        "region",
        "r3",
        "--reason",
        "maintenance",
        "--timeout",
        "30s",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sites"], serde_json::json!(["c", "d"]));
    assert!(err.contains("every connected agent applied"), "{err}");
    let (code, out, _) = axonctl(&["-c", &url, "drains"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("region") && out.contains("maintenance"), "{out}");
    // Draining it again is refused as a precondition, undrain restores.
    let (code, _, _) = axonctl(&[
        "-c", &url, "drain", "region", "r3", "--reason", "again", "--detach",
    ])
    .await;
    assert_eq!(code, 3);
    let (code, _, err) = axonctl(&["-c", &url, "undrain", "region", "r3"]).await;
    assert_eq!(code, 0, "{err}");
    // The drain log has all three acts, newest first: the undrain, the drain, the refusal.
    let (code, out, err) = axonctl(&["-c", &url, "drains", "--history", "--limit", "3"]).await;
    assert_eq!(code, 0, "{err}");
    let acts: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|w| ["drained", "undrained", "refused"].contains(w))
        .collect();
    assert_eq!(acts, ["undrained", "drained", "refused"], "{out}");
    assert!(
        out.contains("lifted") && out.contains("last_healthy_site_in_region"),
        "{out}"
    );
    let (code, out, _) = axonctl(&["-c", &url, "-o", "json", "drains", "--history", "--limit", "1"]).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["drains"], serde_json::json!([]));
    assert_eq!(v["history"].as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(v["history"][0]["action"], "undrained");
    assert_eq!(v["history"][0]["reason"], "maintenance");

    // A maintenance window: the drain shows when it ends, and lifts itself then.
    let (code, _, err) = axonctl(&[
        "-c", &url, "drain", "site", "d", "--reason", "window", "--for", "2s", "--detach",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = axonctl(&["-c", &url, "drains"]).await;
    assert!(out.contains("UNTIL (UTC)") && out.contains("window"), "{out}");
    let (_, json, _) = axonctl(&["-c", &url, "-o", "json", "drains"]).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let until = v[0]["until_unix_ms"].as_u64().unwrap();
    assert_eq!(until - v[0]["at_unix_ms"].as_u64().unwrap(), 2_000, "{json}");
    eventually(Duration::from_secs(30), "the window to end", || async {
        let (_, out, _) = axonctl(&["-c", &url, "-o", "json", "drains"]).await;
        (out.trim() == "[]").then_some(())
    })
    .await;
    let (_, out, _) = axonctl(&["-c", &url, "drains", "--history", "--limit", "2"]).await;
    let newest = out.lines().skip_while(|l| !l.contains("ACTION")).nth(1);
    assert!(
        newest.is_some_and(|l| l.contains("undrained") && l.contains("expiry")),
        "{out}"
    );
    let (code, _, err) = axonctl(&["-c", &url, "drain", "site", "d", "--reason", "x", "--for", "0s"]).await;
    assert_eq!(code, 2, "{err}");

    // A link, named by its two ends either way round.
    let (code, _, err) = axonctl(&[
        "-c",
        &url,
        "drain",
        "link",
        "c",
        "a",
        "--reason",
        "provider work",
        "--detach",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = axonctl(&["-c", &url, "drains"]).await;
    assert!(out.contains("link") && out.contains("a<->c"), "{out}");
    let (code, _, err) = axonctl(&["-c", &url, "undrain", "link", "a", "c"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = axonctl(&["-c", &url, "drain", "link", "a", "--reason", "x"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("both ends"), "{err}");

    // Usage errors exit 2; an unknown site is one clear line; no controller exits 69.
    let (code, _, _) = axonctl(&["-c", &url, "drain", "site", "a"]).await;
    assert_eq!(code, 2, "--reason is required");
    let (code, _, err) = axonctl(&["-c", &url, "routes", "--from", "zz"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("unknown site") && err.lines().count() == 1, "{err}");
    let (code, _, err) = axonctl(&["-c", "http://127.0.0.1:9", "status"]).await;
    assert_eq!(code, 69, "{err}");

    // What-if: a human summary, and a clear error for a change it cannot parse.
    let (code, out, err) = axonctl(&["-c", &url, "whatif", "drain-region r3"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("capacity left 50%"), "{out}");
    let (code, _, err) = axonctl(&["-c", &url, "whatif", "explode everything"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("expected drain-site"), "{err}");

    // The route-change journal: a table (JSON with its bookkeeping), and clear refusals.
    let (code, out, err) = axonctl(&["-c", &url, "changes", "--since", "1h"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("AT (UTC)") && out.contains("REASON"), "{out}");
    let (code, out, err) = axonctl(&["-c", &url, "-o", "json", "changes", "--site", "a"]).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["changes"].is_array() && v["evicted"] == 0, "{out}");
    let (code, _, err) = axonctl(&["-c", &url, "changes", "--site", "zz"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("unknown site `zz`"), "{err}");
    let (code, _, err) = axonctl(&["-c", &url, "changes", "--limit", "20000"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("over 10000"), "{err}");

    b.shutdown().await;
    c.shutdown().await;
}

/// `axonctl` with its environment cleared of any operator's own settings.
async fn axonctl_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_axonctl"));
    for v in [
        "AXON_CONTROLLER",
        "AXON_CA",
        "AXON_CERT",
        "AXON_KEY",
        "AXON_TOKEN",
    ] {
        cmd.env_remove(v);
    }
    let out = cmd.args(args).envs(env.iter().copied()).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axonctl_on_tls_needs_the_operator_role_and_exits_77_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let sites = four_sites();
    let ids: Vec<&str> = sites.iter().map(|s| s.id).collect();
    prober::tls::generate_mesh(dir.path(), &ids).unwrap();
    let files = |stem: &str| prober::tls::mesh_files(dir.path(), stem);
    let mut cfg = controller_config(&sites, None);
    cfg.tls = Some(files("controller"));
    // As an operator would configure it: the token's SHA-256 from `sha256sum`.
    let token_sha = {
        let out = std::process::Command::new("sh")
            .args(["-c", "printf %s open-sesame | sha256sum"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    cfg.operator_tokens = vec![controller::auth::OperatorToken {
        name: "ci".into(),
        sha256: token_sha,
    }];
    let c = controller::start(cfg).await.unwrap();
    let url = format!("https://{}", c.grpc_addr);
    let (ca, op, a) = (files("operator").ca, files("operator"), files("a"));
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (ca, op_cert, op_key, a_cert, a_key) = (
        path(&ca),
        path(&op.cert),
        path(&op.key),
        path(&a.cert),
        path(&a.key),
    );

    // The operator's certificate works.
    let (code, out, err) = axonctl_env(
        &[
            "-c", &url, "--ca", &ca, "--cert", &op_cert, "--key", &op_key, "sites",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SITE"), "{out}");
    // A site's certificate is not an operator's: 77, in one line.
    let (code, _, err) = axonctl_env(
        &[
            "-c", &url, "--ca", &ca, "--cert", &a_cert, "--key", &a_key, "status",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("operator role") && err.lines().count() == 1, "{err}");
    // No credentials at all: 77.
    let (code, _, err) = axonctl_env(&["-c", &url, "--ca", &ca, "status"], &[]).await;
    assert_eq!(code, 77, "{err}");
    // A token from the environment works; a wrong one is 77.
    let (code, _, err) = axonctl_env(
        &["-c", &url, "status"],
        &[("AXON_CA", &ca), ("AXON_TOKEN", "open-sesame")],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = axonctl_env(
        &["-c", &url, "status"],
        &[("AXON_CA", &ca), ("AXON_TOKEN", "guess")],
    )
    .await;
    assert_eq!(code, 77, "{err}");
    // https:// without a CA is a usage error.
    let (code, _, err) = axonctl_env(&["-c", &url, "status"], &[]).await;
    assert_eq!(code, 2, "{err}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_made_by_axonctl_carry_their_roles_through_a_real_controller() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let (code, out, err) = axonctl(&["cert", "init", "--dir", &d, "--days", "400"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ca.pem") && out.contains("ca.key") && out.contains("valid until 20"),
        "{out}"
    );
    // A second CA would orphan every certificate of the first: refused.
    let (code, _, err) = axonctl(&["cert", "init", "--dir", &d]).await;
    assert_ne!(code, 0);
    assert!(err.contains("already holds a CA"), "{err}");
    for args in [
        vec!["controller"],
        vec!["operator", "--name", "alice"],
        vec!["prober", "--site", "a"],
    ] {
        let mut full = vec!["cert", "issue", "--dir", &d];
        full.extend(args.iter().copied());
        let (code, _, err) = axonctl(&full).await;
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    // Usage errors: a prober without a site, an operator without a name.
    for args in [
        vec!["prober"],
        vec!["operator"],
        vec!["operator", "--name", "Alice Smith"],
    ] {
        let mut full = vec!["cert", "issue", "--dir", &d];
        full.extend(args.iter().copied());
        let (code, _, err) = axonctl(&full).await;
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    let file = |stem: &str, ext: &str| format!("{d}/{stem}.{ext}");
    // Validity: a year by default, what --days asks, never past the CA's 400 days; no days at
    // all is a usage error.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let days_left = |stem: &str| {
        let end = proto::auth::earliest_expiry(std::path::Path::new(&file(stem, "pem"))).unwrap();
        (end - now) as f64 / 86_400.0
    };
    let ca_left = days_left("ca");
    assert!((ca_left - 400.0).abs() < 0.1, "{ca_left}");
    assert!((days_left("controller") - 365.0).abs() < 0.1);
    for (days, stem, want) in [("30", "short", 30.0), ("9000", "long", ca_left)] {
        let (code, out, err) = axonctl(&[
            "cert", "issue", "--dir", &d, "agent", "--site", "b", "--out", stem, "--days", days,
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("valid until 20"), "{out}");
        assert!(
            (days_left(stem) - want).abs() < 0.1,
            "{stem}: {}",
            days_left(stem)
        );
    }
    let (code, _, err) = axonctl(&["cert", "issue", "--dir", &d, "controller", "--days", "0"]).await;
    assert_eq!(code, 2, "{err}");

    // A controller on those files: the operator's certificate may administer, the prober's
    // may not (77), and the prober's names its site and the prober role.
    let sites = four_sites();
    let mut cfg = controller_config(&sites, None);
    cfg.tls = Some(prober::tls::TlsFiles::new(
        file("ca", "pem"),
        file("controller", "pem"),
        file("controller", "key"),
    ));
    let c = controller::start(cfg).await.unwrap();
    let url = format!("https://{}", c.grpc_addr);
    let ca = file("ca", "pem");
    let as_who = |stem: &str| (file(stem, "pem"), file(stem, "key"));
    let (op_cert, op_key) = as_who("operator-alice");
    let (code, out, err) = axonctl(&[
        "-c", &url, "--ca", &ca, "--cert", &op_cert, "--key", &op_key, "sites",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SITE"), "{out}");
    let (p_cert, p_key) = as_who("prober-a");
    let (code, _, err) = axonctl(&[
        "-c", &url, "--ca", &ca, "--cert", &p_cert, "--key", &p_key, "status",
    ])
    .await;
    assert_eq!(code, 77, "{err}");
    let pem = std::fs::read(&p_cert).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let peer = proto::auth::Peer::from_cert(&der).unwrap();
    assert!(peer.names("a") && peer.has(proto::auth::Role::Prober) && !peer.has(proto::auth::Role::Operator));
    c.shutdown().await;
}

/// Reads lines from a following `axonctl` until one matches, keeping each in `seen`.
async fn line_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<String>,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> String {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{what} within 60 s; seen:\n{}", seen.join("\n")))
            .unwrap()
            .expect("axonctl still following");
        seen.push(line.clone());
        if matches(&line) {
            return line;
        }
    }
}

/// `changes --follow` against a mesh that measures: the history first, then a blackhole's
/// move as it happens, one line per pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_follow_shows_a_move_as_it_happens() {
    let mesh = Mesh::start(four_sites(), relay_rtt).await;
    let url = endpoint(mesh.controller.as_ref().unwrap());
    eventually(Duration::from_secs(60), "a → c → b", || async {
        (mesh.primary("a", "b").await? == ["a", "c", "b"]).then_some(())
    })
    .await;
    // `links` narrowed to one site: the six links from or to it, once all are measured (d's
    // may come after the relay through c is in place).
    let out = eventually(Duration::from_secs(60), "six links of a", || async {
        let (_, out, _) = axonctl(&["-c", &url, "-o", "json", "links", "--site", "a"]).await;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (v.as_array()?.len() == 6).then_some(out)
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|l| l["from"] == "a" || l["to"] == "a"),
        "{out}"
    );
    let (_, out, _) = axonctl(&["-c", &url, "-o", "json", "links", "--unhealthy"]).await;
    let quiet: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(
        quiet
            .iter()
            .all(|l| l["health"] != "up" || l["wants_evidence"] == true),
        "{out}"
    );
    let (code, _, err) = axonctl(&["-c", &url, "links", "--site", "zz"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no measured link from or to `zz`"), "{err}");

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_axonctl"))
        .args(["-c", &url, "changes", "--follow", "--site", "c"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // A line reads "AT  table E.V  a → b  BEFORE ⇒ AFTER  — REASON".
    let ab = |l: &str| l.contains("  a → b  ");
    // The history: a → b's move onto c.
    line_until(&mut lines, &mut seen, "a → b's move onto c", |l| {
        ab(l)
            && l.split(" ⇒ ")
                .nth(1)
                .is_some_and(|after| after.starts_with("a → c → b ("))
    })
    .await;
    // Then a cut of c → b: a → b leaves c, printed without being asked again.
    mesh.blackhole("c", "b", true);
    let off = line_until(&mut lines, &mut seen, "a → b's move off c", |l| {
        ab(l)
            && l.split(" ⇒ ")
                .next()
                .is_some_and(|before| before.contains("  a → c → b ("))
    })
    .await;
    assert!(off.contains("— switched: "), "{off}");
    // `explain` lists the same move among the pair's latest changes.
    let (code, out, err) = axonctl(&["-c", &url, "explain", "a", "b"]).await;
    assert_eq!(code, 0, "{err}");
    let moved = off.split("  a → b  ").nth(1).unwrap();
    assert!(
        out.lines()
            .any(|l| l.starts_with("changed     ") && l.contains(moved)),
        "{moved} in:\n{out}"
    );
    // Every row has c as an end or a relay.
    assert!(
        seen.iter()
            .all(|l| l.contains(" c ") || l.contains("→ c") || l.contains("c →")),
        "{seen:?}"
    );
    child.kill().await.unwrap();
    mesh.shutdown().await;
}
