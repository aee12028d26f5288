//! `axonctl`: status, sites, links, routes, explain, drain, undrain, drains, what-if, changes.
//!
//! Human tables by default, `-o json` for scripts: data on stdout, diagnostics on stderr.
//! Exit codes: 0 ok, 2 usage, 3 refused by a guardrail, 69 controller unavailable, 75 timed
//! out, 77 not permitted.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;
use serde_json::{Value, json};
use std::path::PathBuf;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Operate an Axon mesh.
#[derive(Debug, Parser)]
#[command(name = "axonctl", version)]
struct Cli {
    /// Controller gRPC endpoint.
    #[arg(
        long,
        short = 'c',
        env = "AXON_CONTROLLER",
        default_value = "http://127.0.0.1:7500",
        global = true
    )]
    controller: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// CA certificate (PEM) that signed the controller's: with it the endpoint must be
    /// `https://`.
    #[arg(long, env = "AXON_CA", global = true)]
    ca: Option<PathBuf>,
    /// This operator's certificate (PEM, operator role), with `--key`.
    #[arg(long, env = "AXON_CERT", global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// This operator's private key (PEM).
    #[arg(long, env = "AXON_KEY", global = true, requires = "cert")]
    key: Option<PathBuf>,
    /// An operator token instead of a certificate, sent as `authorization: Bearer` (prefer the
    /// environment variable: a flag shows in the process list).
    #[arg(long, env = "AXON_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Site,
    Region,
    Link,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Site => "site",
            Kind::Region => "region",
            Kind::Link => "link",
        }
    }

    /// The target's name on the wire: a site or region as named, a link as `A<->B` from its
    /// two ends (`axonctl drain link A B`).
    fn target(self, name: &str, peer: Option<&str>) -> Result<String, Failure> {
        match (self, peer) {
            (Kind::Link, Some(b)) => Ok(format!("{name}<->{b}")),
            (Kind::Link, None) => Err(Failure(2, "a link needs both ends: link A B".into())),
            (_, None) => Ok(name.to_string()),
            (_, Some(_)) => Err(Failure(2, format!("a {} takes one name", self.as_str()))),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The controller, the table in force, and agents on it or behind.
    Status {
        /// List every agent: its table, connection, last error, and the load its media
        /// server reports.
        #[arg(long)]
        agents: bool,
    },
    /// The site inventory, with each site's connected nodes and the sessions they report.
    Sites,
    /// Link state: health, round trip, loss with its standard error ("(probing)" while the
    /// controller asks the link's probers for an evidence burst), jitter and cost.
    Links {
        /// Show RTT p50 as a from × to matrix.
        #[arg(long)]
        matrix: bool,
        /// Only the links from or to this site.
        #[arg(long)]
        site: Option<String>,
        /// Only the links that are not up (degraded, down, stale) or whose probers the
        /// controller is asking for evidence.
        #[arg(long)]
        unhealthy: bool,
    },
    /// Route rows.
    Routes {
        /// Only rows from this site.
        #[arg(long)]
        from: Option<String>,
        /// Only rows to this site.
        #[arg(long)]
        to: Option<String>,
    },
    /// Why a pair uses its path.
    Explain {
        /// Ingress site.
        from: String,
        /// Egress site.
        to: String,
    },
    /// Take a site, region or link out of service.
    Drain {
        /// `site`, `region` or `link`.
        kind: Kind,
        /// Its name (a link's first end).
        name: String,
        /// A link's other end.
        peer: Option<String>,
        /// Why (required).
        #[arg(long)]
        reason: String,
        /// Check the guardrails and show the impact without draining.
        #[arg(long)]
        dry_run: bool,
        /// Override the guardrails.
        #[arg(long)]
        force: bool,
        /// A maintenance window: the drain lifts itself after this long (e.g. `2h`, `1d`);
        /// without it, the drain holds until an undrain.
        #[arg(long = "for", value_parser = parse_duration)]
        window: Option<Duration>,
        /// How long to wait for every agent to apply the new table.
        #[arg(long, value_parser = parse_duration, default_value = "60s", conflicts_with = "detach")]
        timeout: Duration,
        /// Return as soon as the drain is recorded.
        #[arg(long)]
        detach: bool,
    },
    /// Put a drained site, region or link back in service.
    Undrain {
        /// `site`, `region` or `link`.
        kind: Kind,
        /// Its name (a link's first end).
        name: String,
        /// A link's other end.
        peer: Option<String>,
    },
    /// The drains in force; with `--history`, the drain log: who drained, undrained or was
    /// refused what, when and why (operator and automatic), newest first.
    Drains {
        /// Show the drain log after the drains in force.
        #[arg(long)]
        history: bool,
        /// Most log entries.
        #[arg(long, default_value_t = 50, requires = "history")]
        limit: u32,
    },
    /// The mesh's certificates, made locally (no controller): a CA, then one certificate per
    /// daemon or operator, naming the role (and sites) the controller and probers check.
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
    /// What a change would do (e.g. `drain-site X`, `drain-region R`, `cut-link A B`).
    Whatif {
        /// Changes, one per argument.
        changes: Vec<String>,
    },
    /// Pairs whose primary path changed, newest first: when, from what path to what, and
    /// why (the journal of the replica asked, since it started; `journal_rows` of them at
    /// most).
    Changes {
        /// Only pairs this site ends, or relays before or after the change.
        #[arg(long)]
        site: Option<String>,
        /// Only changes this recent (`90s`, `10m`, `2h`).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// At most this many rows (up to 10000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Keep following: the matching changes oldest first, then each new one as its table
        /// is published, one line each (JSON lines with `-o json`), until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CertAction {
    /// Create the mesh CA in DIR: ca.pem (give it to every daemon and operator) and ca.key
    /// (keep it offline). Refuses to replace an existing CA.
    Init {
        /// Where the CA's files go.
        #[arg(long)]
        dir: PathBuf,
        /// Days the CA is valid (every certificate of the mesh must be re-issued under a new
        /// one after).
        #[arg(long, default_value_t = prober::tls::CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Issue a certificate from the CA in DIR: OUT.pem and OUT.key.
    Issue {
        /// The CA's directory (ca.key is read).
        #[arg(long)]
        dir: PathBuf,
        /// What the certificate may do.
        role: CertRole,
        /// A site the certificate speaks for (prober and agent roles; repeatable).
        #[arg(long)]
        site: Vec<String>,
        /// The operator's name, recorded as the author of their drains (operator role).
        #[arg(long)]
        name: Option<String>,
        /// File stem in DIR. Default: the role and its site or name (`prober-aws-use1`).
        #[arg(long)]
        out: Option<String>,
        /// Days the certificate is valid (never past the CA's end). Renew it in place before
        /// then: the daemons load the new files by themselves.
        #[arg(long, default_value_t = prober::tls::CERT_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CertRole {
    Prober,
    Agent,
    Operator,
    Controller,
}

/// The DNS names a certificate for `role` carries, and its default file stem.
fn cert_names(
    role: CertRole,
    sites: &[String],
    name: Option<&str>,
) -> Result<(Vec<String>, String), Failure> {
    let usage = |m: &str| Err(Failure(2, m.into()));
    for site in sites {
        topology::SiteId::new(site.clone()).map_err(|e| Failure(2, format!("--site {site:?}: {e}")))?;
    }
    let (role_name, stem) = match role {
        CertRole::Prober | CertRole::Agent => {
            if sites.is_empty() || name.is_some() {
                return usage("a prober or agent certificate names its sites (--site), no --name");
            }
            let r = if role == CertRole::Prober {
                proto::auth::Role::Prober
            } else {
                proto::auth::Role::Agent
            };
            (r.cert_name(), format!("{r}-{}", sites.join("-")))
        }
        CertRole::Operator => {
            // The name travels as a DNS name in the certificate.
            let dns = |n: &str| {
                (1..=63).contains(&n.len())
                    && n.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            };
            let Some(n) = name.filter(|n| dns(n)) else {
                return usage("an operator certificate needs --name: 1 to 63 of a-z, 0-9, '-', '.'");
            };
            if !sites.is_empty() {
                return usage("an operator certificate names no site");
            }
            (proto::auth::Role::Operator.cert_name(), format!("operator-{n}"))
        }
        CertRole::Controller => {
            if !sites.is_empty() || name.is_some() {
                return usage("a controller certificate takes no --site or --name");
            }
            (
                proto::auth::Role::Controller.cert_name(),
                "controller".to_string(),
            )
        }
    };
    let mut names: Vec<String> = sites.to_vec();
    names.extend(name.map(String::from));
    names.push(role_name.to_string());
    Ok((names, stem))
}

/// A certificate's end, Unix seconds, in UTC to the minute.
fn expires(unix_s: i64) -> String {
    let t = utc(u64::try_from(unix_s).unwrap_or(0).saturating_mul(1_000));
    t.get(..16).map_or(t.clone(), |m| format!("{m} UTC"))
}

/// `axonctl cert …`: local files only.
fn cert(action: CertAction) -> Result<(), Failure> {
    let tls = |e: prober::ProberError| Failure(1, e.to_string());
    match action {
        CertAction::Init { dir, days } => {
            let until = prober::tls::new_ca(&dir, days).map_err(tls)?;
            println!(
                "CA written: {} (every daemon's `ca`), {} (keep it offline); valid until {}",
                dir.join("ca.pem").display(),
                dir.join("ca.key").display(),
                expires(until)
            );
        }
        CertAction::Issue {
            dir,
            role,
            site,
            name,
            out,
            days,
        } => {
            let (names, stem) = cert_names(role, &site, name.as_deref())?;
            let stem = out.unwrap_or(stem);
            if stem.is_empty() || stem.contains('/') || stem == "ca" {
                return Err(Failure(
                    2,
                    format!("--out {stem:?}: a file stem in DIR, not `ca`"),
                ));
            }
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let (files, until) = prober::tls::issue(&dir, &stem, &refs, days).map_err(tls)?;
            println!(
                "{} and {} for {}; valid until {}",
                files.cert.display(),
                files.key.display(),
                names.join(", "),
                expires(until)
            );
        }
    }
    Ok(())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3_600)),
        "d" => Ok(Duration::from_secs(n * 86_400)),
        _ => Err(format!("invalid duration unit in {s:?} (ms, s, m, h, d)")),
    }
}

/// A failure with its exit code.
struct Failure(u8, String);

fn from_status(s: tonic::Status) -> Failure {
    use tonic::Code;
    let code = match s.code() {
        Code::Unavailable | Code::DeadlineExceeded => 69,
        Code::PermissionDenied | Code::Unauthenticated => 77,
        Code::FailedPrecondition => 3,
        _ => 1,
    };
    Failure(code, s.message().to_string())
}

fn version(v: &Option<pb::TableVersion>) -> String {
    v.as_ref()
        .map_or("-".into(), |v| format!("{}.{}", v.epoch, v.version))
}

fn path_text(p: &Option<pb::RoutePath>) -> String {
    p.as_ref().map_or("-".into(), |p| {
        format!("{} ({:.1} ms, MOS {:.2})", p.sites.join(" → "), p.cost_ms, p.mos)
    })
}

fn path_json(p: &Option<pb::RoutePath>) -> Value {
    p.as_ref().map_or(
        Value::Null,
        |p| json!({"sites": p.sites, "cost_ms": p.cost_ms, "mos": p.mos}),
    )
}

/// Prints rows as an aligned table.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// Adds the operator token, if any, to every call.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(b) = &self.0 {
            req.metadata_mut().insert("authorization", b.clone());
        }
        Ok(req)
    }
}

/// The admin client as `axonctl` uses it.
type Admin = AdminClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// The controller endpoint, with TLS when a CA is given.
fn endpoint(cli: &Cli) -> Result<Endpoint, Failure> {
    let mut ep = Endpoint::from_shared(cli.controller.clone())
        .map_err(|e| Failure(2, format!("controller address {:?}: {e}", cli.controller)))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30));
    let https = cli.controller.starts_with("https://");
    match (&cli.ca, https) {
        (Some(ca), true) => {
            let read =
                |p: &PathBuf| std::fs::read(p).map_err(|e| Failure(2, format!("{}: {e}", p.display())));
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(ca)?))
                .domain_name(proto::auth::CONTROLLER_NAME);
            if let (Some(cert), Some(key)) = (&cli.cert, &cli.key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            ep = ep.tls_config(tls).map_err(|e| Failure(2, format!("TLS: {e}")))?;
        }
        (None, false) => {}
        (Some(_), false) => {
            return Err(Failure(
                2,
                "--ca is set: the controller URL must be https://".into(),
            ));
        }
        (None, true) => {
            return Err(Failure(
                2,
                "an https:// controller needs --ca (or AXON_CA)".into(),
            ));
        }
    }
    Ok(ep)
}

/// One sick site in `axonctl status`: what is wrong and what the policy did or would do.
fn sick_line(k: &pb::SickSite, mode: &str) -> String {
    let what = match k.verdict.as_str() {
        "recommended" => format!("drain recommended: axonctl drain site {} --reason …", k.site),
        "held" => format!("automatic drain held back by {}", k.detail),
        "drained" => "drained automatically; lifted once healthy".into(),
        "drained_by_operator" => "drained by an operator".into(),
        _ if mode == "off" => "automatic drains are off".into(),
        _ => "nothing to drain (a shadow site)".into(),
    };
    format!(
        "{}: {} of {} peers down or degraded; {what}",
        k.site, k.bad_peers, k.peers
    )
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // Certificates are local files: no controller to reach.
    if let Command::Cert { action } = cli.command {
        return cert(action);
    }
    proto::auth::install_crypto_provider();
    let channel: Channel = endpoint(&cli)?
        .connect()
        .await
        .map_err(|e| Failure(69, format!("controller {} unreachable: {e}", cli.controller)))?;
    let bearer: Option<MetadataValue<Ascii>> = match &cli.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| Failure(2, "--token: not a valid header value".into()))?,
        ),
        None => None,
    };
    let mut admin = AdminClient::with_interceptor(channel, Bearer(bearer));
    let json_out = cli.output == Output::Json;
    match cli.command {
        Command::Cert { .. } => {}
        Command::Status { agents: list } => {
            let s = admin
                .status(pb::StatusRequest {})
                .await
                .map_err(from_status)?
                .into_inner();
            if json_out {
                let agents: Vec<Value> = s
                    .agents
                    .iter()
                    .map(|a| json!({"node": a.node, "site": a.site, "applied": version(&a.applied), "connected": a.connected, "last_error": a.last_error,
                                    "sessions": a.sessions, "load": a.load, "load_unix_ms": a.load_unix_ms}))
                    .collect();
                println!(
                    "{}",
                    json!({"controller": s.controller, "leader": s.leader, "table": version(&s.table), "sites": s.sites,
                           "links_up": s.links_up, "links_down": s.links_down, "links_degraded": s.links_degraded,
                           "routes": s.routes.as_ref().map(|r| json!({"direct": r.direct, "relayed": r.relayed,
                               "unreachable": r.unreachable, "unprotected": r.unprotected})),
                           "agents_latest": s.agents_latest, "agents_behind": s.agents_behind, "agents": agents,
                           "config_differs": s.config_differs, "auto_drain_mode": s.auto_drain_mode,
                           "sick_sites": s.sick_sites.iter().map(|k| json!({"site": k.site, "peers": k.peers,
                               "bad_peers": k.bad_peers, "verdict": k.verdict, "detail": k.detail})).collect::<Vec<_>>()})
                );
            } else {
                println!(
                    "controller  {} ({})",
                    s.controller,
                    if s.leader { "leader" } else { "follower" }
                );
                if s.computed_unix_ms > 0 {
                    let age_s = unix_ms().saturating_sub(s.computed_unix_ms) / 1_000;
                    println!(
                        "table       {}, computed {} UTC ({age_s} s ago)",
                        version(&s.table),
                        utc(s.computed_unix_ms)
                    );
                } else {
                    println!("table       {}", version(&s.table));
                }
                println!(
                    "sites       {}   links up {} (degraded {})   down {}",
                    s.sites, s.links_up, s.links_degraded, s.links_down
                );
                if let Some(r) = &s.routes {
                    println!(
                        "pairs       {} direct, {} relayed, {} without a path, {} without a backup",
                        r.direct, r.relayed, r.unreachable, r.unprotected
                    );
                }
                println!(
                    "agents      {} on latest, {} behind",
                    s.agents_latest, s.agents_behind
                );
                if !s.config_differs.is_empty() {
                    println!(
                        "config      differs from the leader's in {}: routes would move if this replica took over",
                        s.config_differs.join(", ")
                    );
                }
                for k in &s.sick_sites {
                    println!("sick        {}", sick_line(k, &s.auto_drain_mode));
                }
                if list {
                    println!();
                    let mut agents = s.agents.clone();
                    agents.sort_by(|a, b| (&a.site, &a.node).cmp(&(&b.site, &b.node)));
                    table(
                        &[
                            "NODE",
                            "SITE",
                            "TABLE",
                            "CONNECTED",
                            "SESSIONS",
                            "LOAD",
                            "LAST ERROR",
                        ],
                        agents
                            .iter()
                            .map(|a| {
                                vec![
                                    a.node.clone(),
                                    a.site.clone(),
                                    version(&a.applied),
                                    if a.connected { "yes".into() } else { "no".into() },
                                    a.sessions.map_or("-".into(), |n| n.to_string()),
                                    a.load.map_or("-".into(), |l| format!("{:.0}%", l * 100.0)),
                                    a.last_error.clone(),
                                ]
                            })
                            .collect(),
                    );
                }
            }
        }
        Command::Sites => {
            let s = admin
                .sites(pb::SitesRequest {})
                .await
                .map_err(from_status)?
                .into_inner();
            if json_out {
                let v: Vec<Value> = s.sites.iter().map(|x| json!({"id": x.id, "region": x.region, "provider": x.provider, "role": x.role, "capacity": x.capacity, "drained": x.drained, "sick": x.sick,
                                                                 "nodes": x.nodes, "nodes_reporting": x.nodes_reporting, "sessions": x.sessions, "load": x.load})).collect();
                println!("{}", Value::Array(v));
            } else {
                table(
                    &[
                        "SITE", "REGION", "PROVIDER", "ROLE", "CAPACITY", "DRAINED", "SICK", "NODES",
                        "SESSIONS", "LOAD",
                    ],
                    s.sites
                        .iter()
                        .map(|x| {
                            vec![
                                x.id.clone(),
                                x.region.clone(),
                                x.provider.clone(),
                                x.role.clone(),
                                format!("{}", x.capacity),
                                if x.drained { "yes".into() } else { "".into() },
                                if x.sick { "yes".into() } else { "".into() },
                                x.nodes.to_string(),
                                if x.nodes_reporting > 0 {
                                    x.sessions.to_string()
                                } else {
                                    "-".into()
                                },
                                if x.nodes_reporting > 0 {
                                    format!("{:.0}%", x.load * 100.0)
                                } else {
                                    "-".into()
                                },
                            ]
                        })
                        .collect(),
                );
            }
        }
        Command::Links {
            matrix,
            site,
            unhealthy,
        } => {
            let mut l = admin
                .links(pb::LinksRequest {})
                .await
                .map_err(from_status)?
                .into_inner();
            let measured = !l.links.is_empty();
            if let Some(s) = &site {
                l.links.retain(|x| &x.from == s || &x.to == s);
                if measured && l.links.is_empty() {
                    return Err(Failure(1, format!("no measured link from or to `{s}`")));
                }
            }
            if unhealthy {
                l.links.retain(|x| x.health != "up" || x.wants_evidence);
            }
            if json_out {
                let v: Vec<Value> = l.links.iter().map(|x| json!({"from": x.from, "to": x.to, "health": x.health, "rtt_p50_ms": x.rtt_p50_ms, "loss_ratio": x.loss_ratio, "loss_se": x.loss_se, "jitter_ms": x.jitter_ms, "cost_ms": x.cost_ms, "cost_se_ms": x.cost_se_ms, "wants_evidence": x.wants_evidence})).collect();
                println!("{}", Value::Array(v));
            } else if matrix {
                let mut sites: Vec<String> = l
                    .links
                    .iter()
                    .flat_map(|x| [x.from.clone(), x.to.clone()])
                    .collect();
                sites.sort();
                sites.dedup();
                let mut header = vec!["FROM\\TO"];
                header.extend(sites.iter().map(String::as_str));
                let rows = sites
                    .iter()
                    .map(|a| {
                        let mut r = vec![a.clone()];
                        r.extend(sites.iter().map(|b| {
                            l.links
                                .iter()
                                .find(|x| &x.from == a && &x.to == b)
                                .map_or("-".into(), |x| {
                                    if x.health == "down" {
                                        "down".into()
                                    } else {
                                        format!("{:.1}", x.rtt_p50_ms)
                                    }
                                })
                        }));
                        r
                    })
                    .collect();
                table(&header, rows);
            } else {
                table(
                    &["FROM", "TO", "HEALTH", "RTT P50", "LOSS", "JITTER", "COST"],
                    l.links
                        .iter()
                        .map(|x| {
                            vec![
                                x.from.clone(),
                                x.to.clone(),
                                x.health.clone(),
                                format!("{:.1} ms", x.rtt_p50_ms),
                                format!(
                                    "{:.2}% ±{:.2}{}",
                                    x.loss_ratio * 100.0,
                                    x.loss_se * 100.0,
                                    // The controller has asked for a burst to settle it.
                                    if x.wants_evidence { " (probing)" } else { "" }
                                ),
                                format!("{:.1} ms", x.jitter_ms),
                                format!("{:.1} ±{:.1}", x.cost_ms, x.cost_se_ms),
                            ]
                        })
                        .collect(),
                );
            }
        }
        Command::Routes { from, to } => {
            let r = admin
                .routes(pb::RoutesRequest {
                    from: from.unwrap_or_default(),
                    to: to.unwrap_or_default(),
                })
                .await
                .map_err(from_status)?
                .into_inner();
            if json_out {
                let v: Vec<Value> = r
                    .rows
                    .iter()
                    .filter_map(|x| {
                        let row = x.row.as_ref()?;
                        Some(json!({"src": x.src, "dst": row.dst, "primary": path_json(&row.primary), "backup": path_json(&row.backup), "backup_disjoint": row.backup_disjoint, "reason": row.reason}))
                    })
                    .collect();
                println!("{}", json!({"version": version(&r.version), "rows": v}));
            } else {
                eprintln!("table {}", version(&r.version));
                table(
                    &["FROM", "TO", "PRIMARY", "BACKUP", "WHY"],
                    r.rows
                        .iter()
                        .filter_map(|x| {
                            let row = x.row.as_ref()?;
                            Some(vec![
                                x.src.clone(),
                                row.dst.clone(),
                                path_text(&row.primary),
                                path_text(&row.backup),
                                row.reason.clone(),
                            ])
                        })
                        .collect(),
                );
            }
        }
        Command::Explain { from, to } => {
            let e = admin
                .explain(pb::ExplainRequest { from, to })
                .await
                .map_err(from_status)?
                .into_inner();
            let chosen = e.chosen.clone().unwrap_or_default();
            if json_out {
                let alts: Vec<Value> = e
                    .alternatives
                    .iter()
                    .map(|a| json!({"path": path_json(&a.path), "why_not": a.why_not}))
                    .collect();
                let history: Vec<Value> = e.history.iter().map(change_json).collect();
                println!(
                    "{}",
                    json!({"version": version(&e.version), "primary": path_json(&chosen.primary), "backup": path_json(&chosen.backup), "reason": chosen.reason, "alternatives": alts, "hysteresis": e.hysteresis, "history": history})
                );
            } else {
                println!("table       {}", version(&e.version));
                println!("primary     {}", path_text(&chosen.primary));
                println!("why         {}", chosen.reason);
                for a in &e.alternatives {
                    println!("alternative {}  — {}", path_text(&a.path), a.why_not);
                }
                for c in &e.history {
                    println!("changed     {}", change_line(c));
                }
            }
        }
        Command::Drain {
            kind,
            name,
            peer,
            reason,
            dry_run,
            force,
            window,
            timeout,
            detach,
        } => {
            let name = kind.target(&name, peer.as_deref())?;
            let author = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            let req = pb::DrainRequest {
                kind: kind.as_str().into(),
                name: name.clone(),
                reason,
                author,
                force,
                dry_run,
                duration_s: match window {
                    Some(w) if w.as_secs() == 0 => {
                        return Err(Failure(2, "--for: at least one second".into()));
                    }
                    Some(w) => w.as_secs(),
                    None => 0,
                },
            };
            let r = admin.drain(req).await.map_err(from_status)?.into_inner();
            if !r.refused.is_empty() {
                return Err(Failure(3, r.refused));
            }
            if json_out {
                println!(
                    "{}",
                    json!({"sites": r.sites, "version": version(&r.version), "capacity_left": r.capacity_left, "overridden": r.overridden, "dry_run": dry_run})
                );
            } else {
                let verb = if dry_run { "would drain" } else { "drained" };
                println!(
                    "{verb} {} {name}: sites {} — capacity left {:.0}%",
                    kind.as_str(),
                    r.sites.join(", "),
                    r.capacity_left * 100.0
                );
                if !r.overridden.is_empty() {
                    println!("guardrails overridden: {}", r.overridden.join(", "));
                }
            }
            if !dry_run && !detach {
                wait_applied(&mut admin, &r.version, timeout).await?;
            }
        }
        Command::Undrain { kind, name, peer } => {
            let name = kind.target(&name, peer.as_deref())?;
            let author = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            let r = admin
                .undrain(pb::UndrainRequest {
                    kind: kind.as_str().into(),
                    name: name.clone(),
                    author,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            if json_out {
                println!("{}", json!({"version": version(&r.version)}));
            } else {
                println!(
                    "undrained {} {name} (table {})",
                    kind.as_str(),
                    version(&r.version)
                );
            }
        }
        Command::Drains { history, limit } => {
            let d = admin
                .drains(pb::DrainsRequest { history, limit })
                .await
                .map_err(from_status)?
                .into_inner();
            if json_out {
                let v: Vec<Value> = d.drains.iter().map(|x| json!({"kind": x.kind, "name": x.name, "reason": x.reason, "author": x.author, "at_unix_ms": x.at_unix_ms, "origin": x.origin, "forced": x.forced,
                    "until_unix_ms": (x.until_unix_ms > 0).then_some(x.until_unix_ms)})).collect();
                if history {
                    let h: Vec<Value> = d.history.iter().map(|x| json!({"at_unix_ms": x.at_unix_ms, "action": x.action, "kind": x.kind, "name": x.name,
                        "author": x.author, "origin": x.origin, "reason": x.reason, "forced": x.forced, "detail": x.detail})).collect();
                    println!("{}", json!({"drains": v, "history": h}));
                } else {
                    println!("{}", Value::Array(v));
                }
            } else {
                table(
                    &[
                        "KIND",
                        "NAME",
                        "REASON",
                        "AUTHOR",
                        "AT (UTC)",
                        "ORIGIN",
                        "FORCED",
                        "UNTIL (UTC)",
                    ],
                    d.drains
                        .iter()
                        .map(|x| {
                            vec![
                                x.kind.clone(),
                                x.name.clone(),
                                x.reason.clone(),
                                x.author.clone(),
                                utc(x.at_unix_ms),
                                x.origin.clone(),
                                if x.forced { "yes".into() } else { "".into() },
                                if x.until_unix_ms > 0 {
                                    utc(x.until_unix_ms)
                                } else {
                                    "".into()
                                },
                            ]
                        })
                        .collect(),
                );
                if history {
                    println!();
                    table(
                        &[
                            "AT (UTC)", "ACTION", "KIND", "NAME", "BY", "ORIGIN", "REASON", "DETAIL",
                        ],
                        d.history
                            .iter()
                            .map(|x| {
                                vec![
                                    utc(x.at_unix_ms),
                                    if x.forced {
                                        format!("{} (forced)", x.action)
                                    } else {
                                        x.action.clone()
                                    },
                                    x.kind.clone(),
                                    x.name.clone(),
                                    x.author.clone(),
                                    x.origin.clone(),
                                    x.reason.clone(),
                                    x.detail.clone(),
                                ]
                            })
                            .collect(),
                    );
                }
            }
        }
        Command::Whatif { changes } => {
            let r = admin
                .what_if(pb::WhatIfRequest { changes })
                .await
                .map_err(from_status)?
                .into_inner();
            if json_out {
                println!(
                    "{}",
                    json!({"pairs_better": r.pairs_better, "pairs_worse": r.pairs_worse,
                           "pairs_unreachable": r.pairs_unreachable, "worst_increase_ms": r.worst_increase_ms,
                           "capacity_left": r.capacity_left, "summary": r.summary})
                );
            } else {
                println!(
                    "pairs better {}   worse {}   unreachable {}   worst increase {:.1} ms   capacity left {:.0}%",
                    r.pairs_better,
                    r.pairs_worse,
                    r.pairs_unreachable,
                    r.worst_increase_ms,
                    r.capacity_left * 100.0
                );
                for line in &r.summary {
                    println!("  {line}");
                }
            }
        }
        Command::Changes {
            site,
            since,
            limit,
            follow,
        } => {
            let since_unix_ms = since.map_or(0, |d| {
                unix_ms().saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            });
            if follow {
                return follow_changes(
                    &mut admin,
                    site.unwrap_or_default(),
                    since_unix_ms,
                    limit,
                    json_out,
                )
                .await;
            }
            let r = admin
                .changes(pb::ChangesRequest {
                    site: site.unwrap_or_default(),
                    since_unix_ms,
                    limit,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            if json_out {
                let v: Vec<Value> = r.changes.iter().map(change_json).collect();
                println!(
                    "{}",
                    json!({"changes": v, "more": r.more, "evicted": r.evicted, "oldest_unix_ms": r.oldest_unix_ms})
                );
            } else {
                table(
                    &["AT (UTC)", "TABLE", "PAIR", "BEFORE", "AFTER", "REASON"],
                    r.changes.iter().map(change_cells).collect(),
                );
                if r.more > 0 {
                    eprintln!("{} older changes match; raise --limit to see them", r.more);
                }
                if r.evicted > 0 {
                    eprintln!(
                        "the journal holds changes since {} UTC; {} older ones were evicted",
                        utc(r.oldest_unix_ms),
                        r.evicted
                    );
                }
            }
        }
    }
    Ok(())
}

/// The most rows one `Changes` call returns (the controller's bound).
const MAX_CHANGES: u32 = 10_000;

/// `changes --follow`: asks the controller once a second for what is newer than the last row
/// printed. A row is known by its time and table, so a controller restarted with versions from
/// 1 again still shows its rows. An error that waiting can mend (no leader yet, a controller
/// restarting) is said once and waited out; a refusal ends the command.
async fn follow_changes(
    admin: &mut Admin,
    site: String,
    mut since_unix_ms: u64,
    limit: u32,
    json_out: bool,
) -> Result<(), Failure> {
    let key = |c: &pb::RouteChange| {
        let v = c.version.as_ref().map_or((0, 0), |v| (v.epoch, v.version));
        (c.at_unix_ms, v)
    };
    let mut last: Option<(u64, (u64, u64))> = None;
    let mut waiting: Option<String> = None;
    loop {
        let asked = if last.is_none() { limit } else { MAX_CHANGES };
        match admin
            .changes(pb::ChangesRequest {
                site: site.clone(),
                since_unix_ms,
                limit: asked,
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                if waiting.take().is_some() {
                    eprintln!("the controller answers again");
                }
                if last.is_some() && r.more > 0 {
                    eprintln!("{} changes went by between two asks and are not shown", r.more);
                }
                for c in r.changes.iter().rev().filter(|c| last.is_none_or(|l| key(c) > l)) {
                    if json_out {
                        println!("{}", change_json(c));
                    } else {
                        println!("{}", change_line(c));
                    }
                }
                if let Some(newest) = r.changes.first() {
                    last = last.max(Some(key(newest)));
                    since_unix_ms = newest.at_unix_ms;
                } else {
                    last = last.or(Some((since_unix_ms, (0, 0))));
                }
            }
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::FailedPrecondition | tonic::Code::Unknown
                ) =>
            {
                if waiting.as_deref() != Some(s.message()) {
                    eprintln!("waiting: {}", s.message());
                    waiting = Some(s.message().to_string());
                }
            }
            Err(s) => return Err(from_status(s)),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One journal row on one line, for `changes --follow`.
fn change_line(c: &pb::RouteChange) -> String {
    let cells = change_cells(c);
    format!(
        "{}  table {}  {}  {} ⇒ {}  — {}",
        cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
    )
}

/// One journal row as JSON: times in Unix ms, paths as lists of sites.
fn change_json(c: &pb::RouteChange) -> Value {
    json!({"version": version(&c.version), "at_unix_ms": c.at_unix_ms, "src": c.src, "dst": c.dst,
           "before": c.before, "after": c.after, "cost_before_ms": c.cost_before_ms,
           "cost_after_ms": c.cost_after_ms, "reason": c.reason})
}

/// One journal row as table cells: a path with its cost, `-` for none.
fn change_cells(c: &pb::RouteChange) -> Vec<String> {
    let side = |p: &[String], cost: Option<f64>| match cost {
        _ if p.is_empty() => "-".to_string(),
        Some(ms) => format!("{} ({ms:.1} ms)", p.join(" → ")),
        None => p.join(" → "),
    };
    vec![
        utc(c.at_unix_ms),
        version(&c.version),
        format!("{} → {}", c.src, c.dst),
        side(&c.before, c.cost_before_ms),
        side(&c.after, c.cost_after_ms),
        c.reason.clone(),
    ]
}

/// Now, in Unix ms.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS.mmm`, UTC: journal rows line up with logs and dashboards.
fn utc(unix_ms: u64) -> String {
    let (days, ms) = (unix_ms / 86_400_000, unix_ms % 86_400_000);
    // Days since 1970-01-01 to a civil date, counting in 400-year eras from 0000-03-01 so
    // that each leap day ends its year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1_000 % 60,
        ms % 1_000
    )
}

/// Waits until every connected agent has applied `target` or a later table.
async fn wait_applied(
    admin: &mut Admin,
    target: &Option<pb::TableVersion>,
    timeout: Duration,
) -> Result<(), Failure> {
    let Some(t) = target else { return Ok(()) };
    let want = (t.epoch, t.version);
    let deadline = Instant::now() + timeout;
    loop {
        let s = admin
            .status(pb::StatusRequest {})
            .await
            .map_err(from_status)?
            .into_inner();
        let behind: Vec<&pb::AgentState> = s
            .agents
            .iter()
            .filter(|a| a.connected && a.applied.as_ref().map_or((0, 0), |v| (v.epoch, v.version)) < want)
            .collect();
        if behind.is_empty() {
            eprintln!("every connected agent applied table {}.{}", want.0, want.1);
            return Ok(());
        }
        if Instant::now() >= deadline {
            let names: Vec<&str> = behind.iter().map(|a| a.node.as_str()).collect();
            return Err(Failure(
                75,
                format!("timed out: {} agents behind ({})", behind.len(), names.join(", ")),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("axonctl: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("axonctl: {msg}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sick_site_line_says_what_is_wrong_and_what_to_do() {
        let site = |verdict: &str, detail: &str| pb::SickSite {
            site: "eu1".into(),
            peers: 4,
            bad_peers: 3,
            verdict: verdict.into(),
            detail: detail.into(),
        };
        assert_eq!(
            sick_line(&site("recommended", ""), "recommend"),
            "eu1: 3 of 4 peers down or degraded; drain recommended: axonctl drain site eu1 --reason …"
        );
        assert_eq!(
            sick_line(
                &site("held", "min_active_regions: 2 regions would be left"),
                "enforce"
            ),
            "eu1: 3 of 4 peers down or degraded; automatic drain held back by min_active_regions: 2 regions would be left"
        );
        assert!(
            sick_line(&site("drained", ""), "enforce")
                .ends_with("drained automatically; lifted once healthy")
        );
        assert!(sick_line(&site("off", ""), "off").ends_with("automatic drains are off"));
        assert!(sick_line(&site("off", ""), "enforce").ends_with("(a shadow site)"));
    }

    #[test]
    fn utc_turns_unix_ms_into_civil_time() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        // Leap days, a century that is not a leap year, one that is, and the end of a year.
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000");
        assert_eq!(utc(4_107_542_399_999), "2100-02-28 23:59:59.999");
        assert_eq!(utc(4_107_542_400_000), "2100-03-01 00:00:00.000");
        assert_eq!(utc(1_798_761_599_000), "2026-12-31 23:59:59.000");
        assert_eq!(utc(1_796_283_723_456), "2026-12-03 07:42:03.456");
    }

    #[test]
    fn a_change_row_shows_both_paths_with_their_costs() {
        let c = pb::RouteChange {
            version: Some(pb::TableVersion {
                epoch: 2,
                version: 41,
            }),
            at_unix_ms: 0,
            src: "a".into(),
            dst: "b".into(),
            before: vec!["a".into(), "c".into(), "b".into()],
            after: vec![],
            cost_before_ms: Some(20.04),
            cost_after_ms: None,
            reason: "no usable path".into(),
        };
        assert_eq!(
            change_cells(&c),
            [
                "1970-01-01 00:00:00.000",
                "2.41",
                "a → b",
                "a → c → b (20.0 ms)",
                "-",
                "no usable path"
            ]
        );
    }

    #[test]
    fn durations_take_hours_and_days_and_refuse_unknown_units() {
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("3d"), Ok(Duration::from_secs(259_200)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("3w").unwrap_err().contains("ms, s, m, h, d"));
    }
}
