//! High availability: several controller replicas on one etcd, one of them the leader.
//!
//! Every replica campaigns for leadership through etcd's election API on a lease of
//! `lease_ttl_s`; the winner's leader key revision is its **epoch**, the fencing number every
//! table it publishes carries. Only the leader computes. It writes each table to etcd before
//! its own agents see it — one key per site, in transactions of at most about 1 MiB (a table
//! of 500 sites is some 68 MB, and etcd refuses a request over 1.5 MiB; followers read the
//! sites back a few per request) and then the table's id — every write in a transaction that
//! succeeds only while
//! its leader key still exists with that revision: a deposed leader's writes fail
//! ([`ControllerError::Fenced`]) and it publishes nothing more. Drains and the version counter
//! live in the same fenced writes, so a new leader continues from them.
//!
//! Followers watch the table id in etcd and serve what the leader wrote to their own agents,
//! and tell probers where the leader is. A leader that crashes stops renewing its lease and
//! is replaced within about the TTL; one that shuts down resigns and is replaced at once.
//! Agents never see `(epoch, version)` go backwards: a new leader's epoch is a later etcd
//! revision than any before it.
//!
//! Keys under the prefix: `election` (the election), `state` (drains, last version; JSON),
//! `config` (the leader's routing sections), `table/id` (`epoch version computed_ms` of the
//! table in force), `table/sites/<site>` (the site's encoded `RouteUpdate`, nonce empty, as
//! of the table that last moved one of its paths: a leadership's first table writes every
//! site, the ones after only the sites they moved, so a table that moves one pair of a
//! 500-site mesh writes some 140 KB rather than 68 MB; readers stamp each update with the
//! id and fetch only the keys rewritten since they last read).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use prost::Message;
use proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use topology::{Epoch, SiteId, TableId, Version};
use tracing::{info, warn};

use crate::config::StoreConfig;
use crate::daemon::{Published, Shared};
use crate::error::ControllerError;
use crate::store::{DrainEvent, Snapshot};

/// Puts per transaction: well under etcd's default limit of 128 operations.
const PUTS_PER_TXN: usize = 64;

/// Bytes of values per transaction: under etcd's default request limit of 1.5 MiB with room
/// for keys and framing. A site's update alone is about 280 bytes per destination (140 KB at
/// 500 sites), so a table goes out in many transactions; an update over 1.5 MiB (some 5,000
/// sites) needs etcd's `--max-request-bytes` raised.
const TXN_BYTES: usize = 1 << 20;

/// Sites' updates read per request: tonic refuses a response over 4 MiB, and an update is
/// about 280 KB at 1,000 sites.
const SITES_PER_GET: i64 = 8;

fn store_err(what: &str, e: impl std::fmt::Display) -> ControllerError {
    ControllerError::Store(format!("etcd {what}: {e}"))
}

/// Proof of leadership: the leader key and the revision it was created at (the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    key: Vec<u8>,
    rev: i64,
}

impl Fence {
    /// The epoch this leadership publishes under.
    pub fn epoch(&self) -> u64 {
        self.rev.max(1) as u64
    }
}

/// What a replica knows of the leadership.
#[derive(Debug, Clone, Default)]
pub struct Leadership {
    /// Set while this replica leads.
    pub fence: Option<Fence>,
    /// When this replica became leader.
    pub since: Option<Instant>,
    /// Where the leader is reached (this replica's own URL while it leads), if known.
    pub leader_url: Option<String>,
}

impl Leadership {
    /// The embedded store's single controller: always the leader, epoch from its snapshot.
    pub fn solo(epoch: u64, url: String) -> Self {
        Leadership {
            fence: Some(Fence {
                key: Vec::new(),
                rev: epoch as i64,
            }),
            since: None,
            leader_url: Some(url),
        }
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.fence.is_some()
    }
}

/// The etcd side of a replica: keys, fenced writes, reads of the published table.
#[derive(Clone)]
pub struct Etcd {
    /// The connection in force: replaced whole when the client's files are ([`Etcd::redial`]).
    client: Arc<tokio::sync::watch::Sender<Client>>,
    cfg: Arc<StoreConfig>,
    prefix: String,
}

impl Etcd {
    /// Connects to the configured endpoints.
    /// With `etcd_tls`, over TLS (and a client certificate when one is configured); with
    /// `etcd_user`, authenticated as that user. The files are read now.
    pub async fn connect(cfg: &StoreConfig) -> Result<Self, ControllerError> {
        let client = Self::dial(cfg).await?;
        Ok(Etcd {
            client: Arc::new(tokio::sync::watch::Sender::new(client)),
            cfg: Arc::new(cfg.clone()),
            prefix: cfg.etcd_prefix.clone(),
        })
    }

    /// A client built from `cfg` and the files it names, read now.
    async fn dial(cfg: &StoreConfig) -> Result<Client, ControllerError> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| ControllerError::io(format!("store.{what} {}", path.display()), e))
        };
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let Some(t) = &cfg.etcd_tls {
            let mut tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read("etcd_tls.ca", &t.ca)?));
            if let (Some(cert), Some(key)) = (&t.cert, &t.key) {
                tls = tls.identity(etcd_client::Identity::from_pem(
                    read("etcd_tls.cert", cert)?,
                    read("etcd_tls.key", key)?,
                ));
            }
            options = options.with_tls(tls);
        }
        if let (Some(user), Some(file)) = (&cfg.etcd_user, &cfg.etcd_password_file) {
            let password = String::from_utf8(read("etcd_password_file", file)?).map_err(|_| {
                ControllerError::Config(format!("store.etcd_password_file {}: not UTF-8", file.display()))
            })?;
            options = options.with_user(user.clone(), password.trim_end_matches(['\r', '\n']));
        }
        Client::connect(&cfg.etcd_endpoints, Some(options))
            .await
            .map_err(|e| store_err("connect", e))
    }

    /// The connection in force (a handle: cheap to clone).
    fn client(&self) -> Client {
        self.client.borrow().clone()
    }

    /// Dials etcd again with the client's files as they are now, and puts the new connection
    /// in force once a read through it succeeds: a renewed certificate or a rotated password
    /// without a restart. Streams open on the old connection (a leader's lease keep-alive, a
    /// follower's watch) move to the new one. On an error the connection in force stays.
    pub async fn redial(&self) -> Result<(), ControllerError> {
        let client = Self::dial(&self.cfg).await?;
        client
            .kv_client()
            .get(self.key("table/id"), Some(GetOptions::new().with_keys_only()))
            .await
            .map_err(|e| store_err("read through the new connection", e))?;
        self.client.send_replace(client);
        Ok(())
    }

    /// The files the connection was dialled with: CA, certificate, key, password.
    fn files(&self) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        if let Some(t) = &self.cfg.etcd_tls {
            files.push(t.ca.clone());
            files.extend(t.cert.iter().chain(&t.key).cloned());
        }
        files.extend(self.cfg.etcd_password_file.iter().cloned());
        files
    }

    fn key(&self, k: &str) -> String {
        format!("{}/{k}", self.prefix)
    }

    /// Drains, the drain log and the last version published (empty on a new mesh).
    pub async fn load(&self) -> Result<Snapshot, ControllerError> {
        let mut kv = self.client().kv_client();
        let r = kv
            .get(self.key("state"), None)
            .await
            .map_err(|e| store_err("get state", e))?;
        let mut snapshot: Snapshot = match r.kvs().first() {
            Some(kv) => serde_json::from_slice(kv.value()).map_err(|e| store_err("state", e))?,
            None => Snapshot::default(),
        };
        let r = kv
            .get(self.key("drain_log"), None)
            .await
            .map_err(|e| store_err("get drain log", e))?;
        if let Some(kv) = r.kvs().first() {
            let kept: Vec<DrainEvent> =
                serde_json::from_slice(kv.value()).map_err(|e| store_err("drain log", e))?;
            snapshot.drain_log = merge_drain_logs(kept, std::mem::take(&mut snapshot.drain_log));
        }
        Ok(snapshot)
    }

    /// Writes a table (each site's encoded update, then its id), the state that goes with it
    /// (its drain log under a key of its own, written only when given: `None` when the log
    /// is the one already written, so a table does not rewrite up to `drain_log_rows` rows
    /// each time) and the routing configuration that computed it (for the followers to
    /// compare with their own; `None` when it is the one already written), fenced by `fence`. With `only`, just those sites' keys are written: the
    /// others hold updates whose rows this table did not change (written by an earlier table
    /// of the same leadership, which readers re-stamp with this table's id; see
    /// [`Etcd::read_published`]). Returns how many sites were written.
    #[allow(clippy::too_many_arguments)]
    pub async fn publish(
        &self,
        fence: &Fence,
        state: &Snapshot,
        drain_log: Option<&[DrainEvent]>,
        routing: Option<&serde_json::Value>,
        id: TableId,
        computed_ms: u64,
        encoded: &HashMap<SiteId, Bytes>,
        only: Option<&HashSet<SiteId>>,
    ) -> Result<usize, ControllerError> {
        let mut puts: Vec<(String, Vec<u8>)> = encoded
            .iter()
            .filter(|(site, _)| only.is_none_or(|o| o.contains(*site)))
            .map(|(site, bytes)| (self.key(&format!("table/sites/{site}")), bytes.to_vec()))
            .collect();
        let sites = puts.len();
        // The log lives under its own key; the state carries none.
        let state = Snapshot {
            drain_log: Vec::new(),
            ..state.clone()
        };
        let state = serde_json::to_vec(&state).map_err(|e| store_err("state", e))?;
        puts.push((self.key("state"), state));
        if let Some(log) = drain_log {
            let log = serde_json::to_vec(log).map_err(|e| store_err("drain log", e))?;
            puts.push((self.key("drain_log"), log));
        }
        if let Some(routing) = routing {
            let routing = serde_json::to_vec(routing).map_err(|e| store_err("config", e))?;
            puts.push((self.key("config"), routing));
        }
        let mut batches: Vec<Vec<TxnOp>> = batches(puts)
            .into_iter()
            .map(|b| b.into_iter().map(|(k, v)| TxnOp::put(k, v, None)).collect())
            .collect();
        // The id last, in a transaction of its own: a follower that sees it finds every site.
        let id = TxnOp::put(
            self.key("table/id"),
            format!("{} {} {computed_ms}", id.epoch.0, id.version.0),
            None,
        );
        let mut kv = self.client().kv_client();
        batches.push(vec![id]);
        for ops in batches {
            let txn = Txn::new()
                .when([Compare::create_revision(
                    fence.key.clone(),
                    CompareOp::Equal,
                    fence.rev,
                )])
                .and_then(ops);
            let r = kv.txn(txn).await.map_err(|e| store_err("txn", e))?;
            if !r.succeeded() {
                return Err(ControllerError::Fenced);
            }
        }
        Ok(sites)
    }

    /// The table in force in etcd, if it is newer than `after` and whole. Only the sites'
    /// keys rewritten since `cache` last saw them are fetched. Each update is stamped with the
    /// table's id and time (a site whose rows the table did not change holds the update of the
    /// table that last did). A site key of an earlier leadership is one no longer in the
    /// table, and is left out; one newer than the id means a leader was cut off before it
    /// wrote the id: the table is not whole, and nothing is returned.
    pub async fn read_published(
        &self,
        after: Option<TableId>,
        cache: &mut SiteCache,
    ) -> Result<Option<Published>, ControllerError> {
        let mut kv = self.client().kv_client();
        let r = kv
            .get(self.key("table/id"), None)
            .await
            .map_err(|e| store_err("get table id", e))?;
        let Some((id, computed_ms)) = r.kvs().first().and_then(|kv| parse_id(kv.value())) else {
            return Ok(None);
        };
        if after.is_some_and(|a| a >= id) {
            return Ok(None);
        }
        let revision = r.header().map_or(0, |h| h.revision());
        let prefix = self.key("table/sites/");
        let end = prefix_end(prefix.as_bytes());
        let mut opts = GetOptions::new().with_range(end).with_keys_only();
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let keys = kv
            .get(prefix.clone(), Some(opts))
            .await
            .map_err(|e| store_err("get table keys", e))?;
        let present: HashMap<&[u8], i64> = keys.kvs().iter().map(|k| (k.key(), k.mod_revision())).collect();
        cache
            .sites
            .retain(|k, (rev, _)| present.get(k.as_slice()) == Some(rev));
        let missing: Vec<&[u8]> = present
            .keys()
            .copied()
            .filter(|k| !cache.sites.contains_key(*k))
            .collect();
        let fetched = if missing.len() > 4 * SITES_PER_GET as usize {
            self.get_prefix(&prefix, revision).await?
        } else {
            let mut out = Vec::new();
            for key in missing {
                let mut opts = GetOptions::new();
                if revision > 0 {
                    opts = opts.with_revision(revision);
                }
                let mut r = kv
                    .get(key, Some(opts))
                    .await
                    .map_err(|e| store_err("get table", e))?;
                out.extend(r.take_kvs());
            }
            out
        };
        for item in fetched {
            if cache.sites.contains_key(item.key()) {
                continue;
            }
            match pb::RouteUpdate::decode(item.value()) {
                Ok(u) => {
                    cache.sites.insert(item.key().to_vec(), (item.mod_revision(), u));
                }
                Err(_) => warn!("unreadable table key in etcd; skipped"),
            }
        }
        let mut updates = HashMap::new();
        let mut encoded = HashMap::new();
        for (key, (_, u)) in &cache.sites {
            let site = std::str::from_utf8(key)
                .ok()
                .and_then(|k| k.strip_prefix(&prefix))
                .and_then(|s| SiteId::new(s).ok());
            let Some(site) = site else {
                warn!("unreadable table key in etcd; skipped");
                continue;
            };
            let Some(v) = u.version.as_ref().map(|v| (v.epoch, v.version)) else {
                warn!(site = %site, "a table key without a version in etcd; skipped");
                continue;
            };
            if v.0 < id.epoch.0 {
                // Written by an earlier leadership, whose first table rewrote every site: a
                // site no longer in the inventory.
                continue;
            }
            if v > (id.epoch.0, id.version.0) {
                // A leader was cut off between a site's write and the id's: not whole.
                return Ok(None);
            }
            let mut u = u.clone();
            u.version = Some(pb::TableVersion {
                epoch: id.epoch.0,
                version: id.version.0,
            });
            if computed_ms > 0 {
                u.computed_unix_ms = computed_ms;
            }
            encoded.insert(site.clone(), proto::wire::EncodedRouteUpdate::encode_shared(&u));
            updates.insert(site, Arc::new(u));
        }
        Ok(Some(Published {
            id,
            table: None,
            updates,
            encoded,
            built: HashMap::new(),
        }))
    }

    /// Every key under `prefix` with its value, read a few at a time (a table's sites are far
    /// over what one response may carry) at one revision (`revision`, or the first page's when
    /// 0), so the pages agree.
    async fn get_prefix(
        &self,
        prefix: &str,
        revision: i64,
    ) -> Result<Vec<etcd_client::KeyValue>, ControllerError> {
        let mut kv = self.client().kv_client();
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = revision;
        let mut out = Vec::new();
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(SITES_PER_GET);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let mut r = kv
                .get(from.clone(), Some(opts))
                .await
                .map_err(|e| store_err("get tables", e))?;
            if revision == 0 {
                revision = r.header().map_or(0, |h| h.revision());
            }
            let more = r.more();
            let page = r.take_kvs();
            match page.last() {
                Some(last) if more => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => {
                    out.extend(page);
                    return Ok(out);
                }
            }
            out.extend(page);
        }
    }

    /// The routing configuration the leader last published with (see [`Etcd::publish`]),
    /// read only when it was written since `seen` last held it (a follower asks every 2 s;
    /// at 1,000 sites the configuration is some 100 KB).
    pub async fn read_config(
        &self,
        seen: &mut Option<(i64, serde_json::Value)>,
    ) -> Result<Option<serde_json::Value>, ControllerError> {
        let mut kv = self.client().kv_client();
        let key = self.key("config");
        let r = kv
            .get(key.clone(), Some(GetOptions::new().with_keys_only()))
            .await
            .map_err(|e| store_err("get config", e))?;
        let Some(rev) = r.kvs().first().map(etcd_client::KeyValue::mod_revision) else {
            *seen = None;
            return Ok(None);
        };
        if let Some((at, value)) = seen.as_ref()
            && *at == rev
        {
            return Ok(Some(value.clone()));
        }
        let r = kv
            .get(key, Some(GetOptions::new().with_revision(rev)))
            .await
            .map_err(|e| store_err("get config", e))?;
        let Some(item) = r.kvs().first() else {
            return Ok(None);
        };
        let value: serde_json::Value =
            serde_json::from_slice(item.value()).map_err(|e| store_err("config", e))?;
        *seen = Some((item.mod_revision(), value.clone()));
        Ok(Some(value))
    }

    /// A lease of `ttl`, for [`Etcd::elect`]: leadership ends when it is no longer renewed.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, ControllerError> {
        let r = self
            .client()
            .lease_client()
            .grant(ttl.as_secs() as i64, None)
            .await
            .map_err(|e| store_err("lease", e))?;
        Ok(r.id())
    }

    /// Campaigns for leadership under `lease`, advertising `url`; resolves once elected, with
    /// the fence every write of this leadership carries.
    pub async fn elect(&self, url: &str, lease: i64) -> Result<Fence, ControllerError> {
        let r = self
            .client()
            .election_client()
            .campaign(self.key("election"), url, lease)
            .await
            .map_err(|e| store_err("campaign", e))?;
        r.leader()
            .map(|k| Fence {
                key: k.key().to_vec(),
                rev: k.rev(),
            })
            .ok_or_else(|| store_err("campaign", "no leader key in the answer"))
    }

    /// The URL the current leader advertises, if there is one.
    pub async fn leader_url(&self) -> Option<String> {
        let r = self
            .client()
            .election_client()
            .leader(self.key("election"))
            .await
            .ok()?;
        r.kv().and_then(|kv| kv.value_str().ok()).map(str::to_string)
    }
}

/// Puts grouped into transactions of at most [`PUTS_PER_TXN`] operations and about
/// [`TXN_BYTES`] of values (a put larger than that goes alone), in order.
fn batches(puts: Vec<(String, Vec<u8>)>) -> Vec<Vec<(String, Vec<u8>)>> {
    let mut out: Vec<Vec<(String, Vec<u8>)>> = Vec::new();
    let mut bytes = 0;
    for (key, value) in puts {
        let size = key.len() + value.len();
        let full = out
            .last()
            .is_none_or(|b| b.len() == PUTS_PER_TXN || (bytes + size > TXN_BYTES && !b.is_empty()));
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(b) = out.last_mut() {
            b.push((key, value));
        }
    }
    out
}

/// The end of the key range that holds every key starting with `prefix` (etcd's own
/// rule: the prefix with its last byte below 0xff incremented).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: no end, every key from the prefix on.
    vec![0]
}

/// A table id as written: `epoch version computed_ms` (the time is 0 when absent).
fn parse_id(v: &[u8]) -> Option<(TableId, u64)> {
    let s = std::str::from_utf8(v).ok()?;
    let mut parts = s.split(' ');
    let id = TableId {
        epoch: Epoch(parts.next()?.parse().ok()?),
        version: Version(parts.next()?.parse().ok()?),
    };
    let ms = match parts.next() {
        Some(ms) => ms.parse().ok()?,
        None => 0,
    };
    Some((id, ms))
}

/// What a follower keeps of the table's site keys between reads (see
/// [`Etcd::read_published`]): by key, the revision it was written at and its update.
#[derive(Debug, Default)]
pub struct SiteCache {
    sites: HashMap<Vec<u8>, (i64, pb::RouteUpdate)>,
}

/// Keeps `lease` alive until it is lost (etcd unreachable past the TTL, or revoked).
async fn keep_alive(etcd: &Etcd, lease: i64, ttl: Duration) -> ControllerError {
    let mut clients = etcd.client.subscribe();
    let Ok((mut keeper, mut stream)) = etcd.client().lease_client().keep_alive(lease).await else {
        return store_err("keep-alive", "cannot open the stream");
    };
    let mut last_ok = Instant::now();
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tokio::select! {
            Ok(()) = clients.changed() => {
                // The client's files were replaced: the same lease, kept over the new
                // connection (the old one may not reconnect once its certificate expires).
                let client = clients.borrow_and_update().clone();
                match client.lease_client().keep_alive(lease).await {
                    Ok(s) => {
                        (keeper, stream) = s;
                        info!("etcd: lease kept alive over the new connection");
                    }
                    Err(e) => warn!(error = %e, "etcd: keep-alive over the new connection failed; the old one goes on"),
                }
            }
            _ = tick.tick() => {
                if last_ok.elapsed() >= ttl {
                    return store_err("lease", "not renewed within its TTL");
                }
                if keeper.keep_alive().await.is_err() {
                    return store_err("lease", "keep-alive stream closed");
                }
            }
            m = stream.message() => match m {
                Ok(Some(r)) if r.ttl() > 0 => last_ok = Instant::now(),
                Ok(Some(_)) => return store_err("lease", "expired"),
                Ok(None) | Err(_) => return store_err("lease", "keep-alive stream ended"),
            },
        }
    }
}

/// Keeps etcd's history short while this replica leads (see `store.etcd_compact_s`): at
/// every period it compacts up to the revision seen at the one before, so at least a period
/// of history is always left for watchers that lag.
struct Compactor {
    every: Option<Duration>,
    next: tokio::time::Instant,
    /// The revision seen at the last pass: the next pass compacts up to it.
    seen: Option<i64>,
}

impl Compactor {
    fn new(every: Option<Duration>) -> Self {
        Compactor {
            every,
            next: tokio::time::Instant::now() + every.unwrap_or_default(),
            seen: None,
        }
    }

    /// Resolves at the next pass (never, when compaction is off).
    async fn due(&self) {
        match self.every {
            Some(_) => tokio::time::sleep_until(self.next).await,
            None => std::future::pending().await,
        }
    }

    /// Compacts up to the revision seen at the last pass, and notes the current one. A
    /// revision already compacted (by another client, or by etcd itself) counts as done.
    async fn pass(&mut self, etcd: &Etcd, metrics: &crate::metrics::Metrics) {
        self.next = tokio::time::Instant::now() + self.every.unwrap_or_default();
        let mut kv = etcd.client().kv_client();
        let now = match kv.get(etcd.key("table/id"), None).await {
            Ok(r) => r.header().map(|h| h.revision()),
            Err(e) => {
                warn!(error = %e, "etcd: cannot read the revision to compact to");
                None
            }
        };
        if let Some(rev) = self.seen.filter(|r| *r > 0) {
            let result = match kv.compact(rev, None).await {
                Ok(_) => "done",
                Err(e) if e.to_string().contains("compacted") => "done",
                Err(e) => {
                    warn!(error = %e, revision = rev, "etcd: compaction failed");
                    "failed"
                }
            };
            metrics.etcd_compactions.with_label_values(&[result]).inc();
            if result == "done" {
                tracing::debug!(revision = rev, "etcd history compacted");
            }
        }
        if now.is_some() {
            self.seen = now;
        }
    }
}

/// Campaigns for leadership for the replica's whole life; while leading, hands the core its
/// epoch and the stored state, and wakes the compute loop. On shutdown a leader resigns, so
/// another replica takes over at once.
pub async fn campaign(
    shared: Arc<Shared>,
    etcd: Etcd,
    ttl: Duration,
    url: String,
    cancel: CancellationToken,
) {
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let lease = match etcd.grant(ttl).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "etcd: cannot get a lease; retrying");
                shared.metrics.leader.set(0);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        let keep = keep_alive(&etcd, lease, ttl);
        tokio::pin!(keep);
        let won = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = etcd.client().lease_client().revoke(lease).await;
                return;
            }
            e = &mut keep => {
                warn!(error = %e, "etcd: lease lost while campaigning");
                continue;
            }
            r = etcd.elect(&url, lease) => r,
        };
        let fence = match won {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "etcd: campaign failed; retrying");
                let _ = etcd.client().lease_client().revoke(lease).await;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        match etcd
            .load()
            .await
            .and_then(|snap| shared.core().lead(fence.epoch(), &snap))
        {
            Ok(()) => {}
            Err(e) => {
                warn!(error = %e, "etcd: cannot take the lead; resigning");
                let _ = etcd.client().lease_client().revoke(lease).await;
                continue;
            }
        }
        info!(name = %shared.name, epoch = fence.epoch(), "leading");
        shared.metrics.leader.set(1);
        shared.leadership.send_replace(Leadership {
            fence: Some(fence),
            since: Some(Instant::now()),
            leader_url: Some(url.clone()),
        });
        shared.recompute.notify_one();
        let mut compactor = Compactor::new(shared.compact_every);
        let resign = loop {
            tokio::select! {
                _ = cancel.cancelled() => break true,
                e = &mut keep => {
                    warn!(error = %e, "etcd: leadership lost");
                    break false;
                }
                () = compactor.due() => compactor.pass(&etcd, &shared.metrics).await,
            }
        };
        shared.leadership.send_replace(Leadership::default());
        shared.metrics.leader.set(0);
        if resign {
            // Revoking the lease deletes the leader key: the next replica is elected now,
            // not a TTL from now.
            let _ = etcd.client().lease_client().revoke(lease).await;
            info!(name = %shared.name, "resigned");
            return;
        }
    }
}

/// Reads the etcd client's files every `store.etcd_files_recheck_s` for as long as the
/// returned future runs, and dials etcd again with them once they were replaced and settled
/// ([`proto::auth::FileWatch`]; [`Etcd::redial`]). The result is counted with the process's
/// own TLS files (`axon_tls_file_changes_total`), and the expiry gauges follow the files in
/// force. Returns at once when the check is off or there are no files.
pub async fn watch_files(etcd: Etcd, metrics: ops::tls::TlsMetrics) {
    let files = etcd.files();
    if etcd.cfg.etcd_files_recheck_s == 0 || files.is_empty() {
        return;
    }
    let period = Duration::from_secs(etcd.cfg.etcd_files_recheck_s);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = proto::auth::FileWatch::new(files);
    loop {
        ticks.tick().await;
        if !watch.check() {
            continue;
        }
        match etcd.redial().await {
            Ok(()) => {
                metrics.count_change(true);
                observe_etcd_files(&etcd.cfg, &metrics);
                info!("etcd client files replaced: connected with them");
            }
            Err(e) => {
                metrics.count_change(false);
                warn!(error = %e, "etcd client files replaced, but etcd refuses them; the connection in force stays");
            }
        }
    }
}

/// Exports the expiry of the etcd client's certificate and CA, so the expiry alerts cover
/// them (`file="etcd_cert"`, `file="etcd_ca"`).
pub fn observe_etcd_files(cfg: &StoreConfig, metrics: &ops::tls::TlsMetrics) {
    if let Some(t) = &cfg.etcd_tls {
        metrics.observe_file("etcd_ca", &t.ca);
        if let Some(cert) = &t.cert {
            metrics.observe_file("etcd_cert", cert);
        }
    }
}

/// The drain log a new leader takes over: the one under its own key, plus any rows a
/// controller that knew no such key wrote inside the state since (during a rolling upgrade),
/// oldest first, each row once.
fn merge_drain_logs(kept: Vec<DrainEvent>, in_state: Vec<DrainEvent>) -> Vec<DrainEvent> {
    if in_state.is_empty() {
        return kept;
    }
    let mut all = kept;
    for e in in_state {
        if !all.contains(&e) {
            all.push(e);
        }
    }
    // Stable: rows of the same millisecond keep the order they were written in.
    all.sort_by_key(|e| e.at_ms);
    all
}

/// While this replica follows: serves the leader's tables from etcd to its own agents (at
/// once on a change of the table id, and every 2 s in case a change was missed), and keeps
/// the leader's address for probers.
pub async fn follow(shared: Arc<Shared>, etcd: Etcd, cancel: CancellationToken) {
    let mut leadership = shared.leadership.subscribe();
    let mut watch = None;
    let mut cache = SiteCache::default();
    let mut leader_config = None;
    let mut clients = etcd.client.subscribe();
    loop {
        if clients.has_changed().unwrap_or(false) {
            // The client's files were replaced: watch over the new connection.
            clients.mark_unchanged();
            watch = None;
        }
        if leadership.borrow().is_leader() {
            watch = None;
            shared.set_config_drift(Vec::new());
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = leadership.changed() => continue,
            }
        }
        if watch.is_none() {
            watch = etcd
                .client()
                .watch_client()
                .watch(etcd.key("table/id"), None)
                .await
                .ok();
        }
        let current = shared.published.borrow().as_ref().map(|p| p.id);
        match etcd.read_published(current, &mut cache).await {
            Ok(Some(p)) if !leadership.borrow().is_leader() => {
                info!(
                    epoch = p.id.epoch.0,
                    version = p.id.version.0,
                    "following the leader's table"
                );
                shared.metrics.table_version.set(p.id.version.0 as i64);
                let new = Arc::new(p);
                let old = shared.published.send_replace(Some(Arc::clone(&new)));
                shared.refresh_agent_gauges();
                // The agents have it; the journal records what it moved, off their path.
                if let Some(old) = old {
                    let shared = Arc::clone(&shared);
                    let recorded =
                        tokio::task::spawn_blocking(move || shared.record_changes(&old, &new)).await;
                    if let Ok((primary, backup)) = recorded {
                        info!(
                            primary_changes = primary,
                            backup_only_changes = backup,
                            "changes recorded"
                        );
                    }
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "etcd: cannot read the published table"),
        }
        match etcd.read_config(&mut leader_config).await {
            Ok(Some(leader)) if !leadership.borrow().is_leader() => {
                let differs = shared.core().config().differs_from(&leader);
                shared.set_config_drift(differs);
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "etcd: cannot read the leader's configuration"),
        }
        let url = etcd.leader_url().await;
        if !leadership.borrow().is_leader() {
            shared.leadership.send_if_modified(|l| {
                let changed = !l.is_leader() && l.leader_url != url;
                if changed {
                    l.leader_url = url.clone();
                }
                changed
            });
        }
        let changed = async {
            match watch.as_mut() {
                Some(w) => {
                    if !matches!(w.message().await, Ok(Some(_))) {
                        // The watch broke (etcd restarted): make a new one next time.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        return false;
                    }
                    true
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = leadership.changed() => {}
            ok = changed => if !ok { watch = None; },
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// An etcd server of its own on loopback, for the lab and the tests: the `etcd` binary
/// (Debian's `etcd-server`) started in `dir`, killed on drop.
pub struct LocalEtcd {
    child: std::process::Child,
    /// Its client URL.
    pub url: String,
}

impl LocalEtcd {
    /// Starts `etcd` on two free loopback ports and waits until it answers (10 s at most).
    pub async fn start(dir: &Path) -> Result<Self, ControllerError> {
        LocalEtcd::start_with(dir, None).await
    }

    /// [`LocalEtcd::start`] over TLS: clients connect to `https://` with a certificate signed
    /// by `tls.ca` (`--client-cert-auth`), and `tls.cert` (naming `127.0.0.1`) is the
    /// server's.
    pub async fn start_tls(dir: &Path, tls: &proto::auth::TlsFiles) -> Result<Self, ControllerError> {
        LocalEtcd::start_with(dir, Some(tls)).await
    }

    async fn start_with(dir: &Path, tls: Option<&proto::auth::TlsFiles>) -> Result<Self, ControllerError> {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| ControllerError::io("free port for etcd", e))
        };
        let (client, peer) = (free()?, free()?);
        let url = format!("{}://{client}", if tls.is_some() { "https" } else { "http" });
        let peer_url = format!("http://{peer}");
        let mut cmd = std::process::Command::new("etcd");
        cmd.arg("--name=axon")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=axon={peer_url}"))
            .arg("--logger=zap")
            .arg("--log-level=error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(t) = tls {
            cmd.arg(format!("--cert-file={}", t.cert.display()))
                .arg(format!("--key-file={}", t.key.display()))
                .arg(format!("--trusted-ca-file={}", t.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = cmd.spawn().map_err(|e| {
            ControllerError::io("starting etcd (install it with `apt-get install etcd-server`)", e)
        })?;
        let server = LocalEtcd { child, url };
        let cfg = StoreConfig {
            kind: "etcd".into(),
            etcd_endpoints: vec![server.url.clone()],
            etcd_tls: tls.map(|t| crate::config::EtcdTls {
                ca: t.ca.clone(),
                cert: Some(t.cert.clone()),
                key: Some(t.key.clone()),
            }),
            ..StoreConfig::default()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(e) = Etcd::connect(&cfg).await
                && e.client().kv_client().get("/", None).await.is_ok()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(ControllerError::Store(format!(
                    "etcd at {} did not answer within 10 s",
                    server.url
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_go_out_in_transactions_under_etcds_limits_and_in_order() {
        let put = |i: usize, size: usize| (format!("k{i:03}"), vec![0u8; size]);
        // Small values: by count.
        let small: Vec<_> = (0..150).map(|i| put(i, 10)).collect();
        let b = batches(small);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [64, 64, 22]);
        // 140 KB values: seven to a transaction, and one over the budget goes alone.
        let mut big: Vec<_> = (0..20).map(|i| put(i, 140_000)).collect();
        big.insert(3, put(99, 3 << 20));
        let b = batches(big);
        let sizes: Vec<usize> = b.iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 1, 7, 7, 3]);
        let keys: Vec<&str> = b.iter().flatten().map(|(k, _)| k.as_str()).collect();
        let mut want: Vec<String> = (0..20).map(|i| format!("k{i:03}")).collect();
        want.insert(3, "k099".into());
        assert_eq!(keys, want, "every put once, in order");
        assert!(batches(Vec::new()).is_empty());
    }

    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(prefix_end(b"/axon/table/sites/"), b"/axon/table/sites0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn a_drain_log_written_inside_the_state_by_an_older_controller_is_kept() {
        let event = |at_ms, author: &str| DrainEvent {
            at_ms,
            action: crate::store::DrainAction::Drained,
            target: topology::DrainTarget::Site(SiteId::new("a").unwrap()),
            author: author.into(),
            origin: topology::DrainOrigin::Operator,
            reason: "maintenance".into(),
            forced: false,
            detail: String::new(),
        };
        let kept = vec![event(1, "alice"), event(5, "bob")];
        // Nothing since: the key's log as it is.
        assert_eq!(merge_drain_logs(kept.clone(), Vec::new()), kept);
        // An older leader read no log and wrote its own rows (and one it saw the newer write
        // in an earlier state) into the state: each row once, oldest first.
        let merged = merge_drain_logs(
            kept.clone(),
            vec![event(5, "bob"), event(3, "carol"), event(9, "dave")],
        );
        let authors: Vec<&str> = merged.iter().map(|e| e.author.as_str()).collect();
        assert_eq!(authors, ["alice", "carol", "bob", "dave"]);
    }
}
