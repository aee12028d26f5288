//! The route-change journal: which pairs moved, from what path to what path, when and why.
//!
//! `axonctl explain` says why a pair is on its path now; after an incident an operator asks
//! what moved at 03:12, and `axon_route_switches_total` only counts. The controller that
//! publishes a table records every pair whose primary path it changed, in a bounded ring
//! (oldest rows evicted first, counted), and `axonctl changes` reads it back, filtered by a
//! site (as an end or a relay) and by time.
//!
//! Every replica keeps one. The leader records what each table it publishes moved, from the
//! two tables themselves; a follower records the same from the per-site rows it reads back
//! from etcd ([`Journal::record_updates`]), so the replica that takes over the lead already
//! holds the history of the leader it replaces, and records the handover's own moves
//! against the last table it followed. A follower that reads two tables at once records
//! their combined moves under the later one.
//!
//! With `store.journal` set, the journal is also kept in a file ([`Journal::open`]), so a
//! restarted or upgraded replica still answers "what moved at 03:12": one JSON object per
//! line, appended as tables are recorded, and rewritten whole (temporary file, fsync, rename)
//! at start and whenever it holds twice the rows the journal keeps. Each replica keeps its
//! own file, locked while the replica runs. Without the file, a restarted replica starts an
//! empty journal (the log keeps each table's counts).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use proto::v1 as pb;
use serde::{Deserialize, Serialize};
use topology::{Reason, RouteTable, RowChange, SiteId, TableId};

use crate::core::reason_text;
use crate::error::ControllerError;

/// One pair whose primary path changed in a published table. Its JSON form is one line of
/// the journal file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalRow {
    /// The table that made the change.
    pub table: TableId,
    /// When that table was computed, Unix ms.
    pub at_ms: u64,
    /// Ingress site.
    pub src: SiteId,
    /// Egress site.
    pub dst: SiteId,
    /// The path before, ingress to egress (`None`: no path, or a pair new to the table).
    pub before: Option<Vec<SiteId>>,
    /// The path after (`None`: the pair has no usable path now, or left the table).
    pub after: Option<Vec<SiteId>>,
    /// Primary cost before, ms.
    pub cost_before: Option<f32>,
    /// Primary cost after, ms.
    pub cost_after: Option<f32>,
    /// Why the new path was chosen, in words (as `axonctl explain` and the agents' rows say
    /// it).
    pub reason: String,
}

impl JournalRow {
    /// Whether a row read back from the file could have been recorded: two distinct ends,
    /// paths from one to the other, costs finite and not negative. Anything else is dropped
    /// as unreadable.
    fn is_sound(&self) -> bool {
        let cost = |c: Option<f32>| c.is_none_or(|c| c.is_finite() && c >= 0.0);
        let path = |p: &Option<Vec<SiteId>>| {
            p.as_ref()
                .is_none_or(|p| p.len() >= 2 && p.first() == Some(&self.src) && p.last() == Some(&self.dst))
        };
        self.src != self.dst
            && cost(self.cost_before)
            && cost(self.cost_after)
            && path(&self.before)
            && path(&self.after)
    }

    /// Whether `site` is an end of the pair or a relay of either path: "what moved through
    /// Miami" includes the pairs that left it.
    pub fn involves(&self, site: &SiteId) -> bool {
        &self.src == site
            || &self.dst == site
            || [&self.before, &self.after]
                .into_iter()
                .flatten()
                .any(|p| p.contains(site))
    }
}

/// The journal's file, open for appending and locked.
#[derive(Debug)]
struct JournalFile {
    path: PathBuf,
    out: BufWriter<File>,
    /// Rows in the file now.
    lines: usize,
    /// A write failed part-way: the file may end in a cut line, so the next append rewrites
    /// it whole instead.
    broken: bool,
}

impl JournalFile {
    /// Writes `rows` to a temporary file next to `path`, makes it durable and renames it over
    /// `path`: a crash leaves either the old file or the new one. The handle stays open (and
    /// locked) for the appends that follow.
    fn write<'a>(
        path: PathBuf,
        rows: impl IntoIterator<Item = &'a JournalRow>,
    ) -> std::io::Result<JournalFile> {
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let f = File::create(&tmp)?;
        f.try_lock().map_err(std::io::Error::other)?;
        let mut out = BufWriter::with_capacity(64 * 1024, f);
        let mut lines = 0;
        for row in rows {
            write_row(&mut out, row)?;
            lines += 1;
        }
        out.flush()?;
        out.get_ref().sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename itself must survive a crash.
            File::open(dir)?.sync_all()?;
        }
        Ok(JournalFile {
            path,
            out,
            lines,
            broken: false,
        })
    }

    /// Appends `rows[new..]`, the rows just recorded, and hands them to the kernel (a crash
    /// of the controller loses none; a crash of the host may lose the last few seconds'). The
    /// file is rewritten from `rows` instead when it has grown to twice `capacity` (the
    /// evicted rows go), or when an earlier write failed.
    fn append(&mut self, rows: &VecDeque<JournalRow>, new: usize, capacity: usize) -> std::io::Result<()> {
        let added = rows.len() - new;
        if self.broken || self.lines + added > 2 * capacity + 64 {
            let path = self.path.clone();
            self.broken = true;
            *self = JournalFile::write(path, rows)?;
            return Ok(());
        }
        let written = rows
            .range(new..)
            .try_for_each(|row| write_row(&mut self.out, row));
        let flushed = written.and_then(|()| self.out.flush());
        if flushed.is_err() {
            self.broken = true;
        }
        self.lines += added;
        flushed
    }
}

/// One row as one line of JSON.
fn write_row(out: &mut impl Write, row: &JournalRow) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, row)?;
    out.write_all(b"\n")
}

/// What a reader asks of the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalQuery {
    /// Only rows that involve this site (see [`JournalRow::involves`]).
    pub site: Option<SiteId>,
    /// Only this ordered pair's rows (`explain` shows a pair's history).
    pub pair: Option<(SiteId, SiteId)>,
    /// Only rows of tables computed at or after this instant, Unix ms.
    pub since_ms: u64,
    /// At most this many rows, newest first.
    pub limit: usize,
}

/// The rows a query found.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalPage {
    /// Newest first.
    pub rows: Vec<JournalRow>,
    /// Rows that matched but were left out by the limit.
    pub more: usize,
    /// Rows evicted for room since this controller started: a history that old is gone.
    pub evicted: u64,
    /// When the oldest row still kept was recorded, Unix ms (`None`: empty).
    pub oldest_ms: Option<u64>,
}

/// A bounded record of primary-path changes, oldest evicted first.
#[derive(Debug)]
pub struct Journal {
    rows: VecDeque<JournalRow>,
    capacity: usize,
    evicted: u64,
    /// Where the rows are kept across restarts (`store.journal`).
    file: Option<JournalFile>,
    /// The last failure to write the file, until [`Journal::take_file_error`] reads it.
    file_error: Option<String>,
}

/// What [`Journal::open`] found in the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Rows read back and kept.
    pub rows: usize,
    /// Rows read back but beyond the journal's capacity (the oldest), counted as evicted.
    pub evicted: usize,
    /// Lines that did not parse as a row and were dropped (a line cut short by a crash
    /// while it was written, or a file edited by hand).
    pub unreadable: usize,
}

impl Journal {
    /// A journal in memory only, keeping at most `capacity` rows (zero keeps none: the
    /// journal is off).
    pub fn new(capacity: usize) -> Self {
        Journal {
            rows: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            evicted: 0,
            file: None,
            file_error: None,
        }
    }

    /// A journal kept in `path` as well: the rows already there are read back (the newest
    /// `capacity` of them), the file is rewritten with just those, and every row recorded
    /// from now on is appended to it. The file stays locked while the journal lives, so two
    /// replicas cannot share one. Refused when the file cannot be created, read or locked
    /// (a configuration to fix); lines that do not parse are dropped and counted in
    /// [`Loaded::unreadable`]. A rewrite that fails (a full disk) is not fatal: it is
    /// reported by [`Journal::take_file_error`] and tried again at each recording.
    pub fn open(capacity: usize, path: &Path) -> Result<(Journal, Loaded), ControllerError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            ControllerError::Store(format!("journal {}: {what}: {e}", path.display()))
        };
        let mut held = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| fail("cannot open", &e))?;
        held.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => ControllerError::Store(format!(
                "journal {}: in use by another controller (each replica needs a file of its own)",
                path.display()
            )),
            std::fs::TryLockError::Error(e) => fail("cannot lock", &e),
        })?;
        let mut text = Vec::new();
        held.read_to_end(&mut text).map_err(|e| fail("cannot read", &e))?;
        let mut journal = Journal::new(capacity);
        let mut loaded = Loaded::default();
        for line in text.split(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty()) {
            match serde_json::from_slice::<JournalRow>(line) {
                Ok(row) if row.is_sound() => {
                    journal.rows.push_back(row);
                    if journal.rows.len() > capacity {
                        journal.rows.pop_front();
                        loaded.evicted += 1;
                    }
                }
                _ => loaded.unreadable += 1,
            }
        }
        loaded.rows = journal.rows.len();
        journal.evicted = loaded.evicted as u64;
        let file = match JournalFile::write(path.to_path_buf(), &journal.rows) {
            // The rewrite holds the lock on the new file; the old one is released with its
            // handle.
            Ok(file) => file,
            // A disk full or a directory gone read-only must not keep the controller from
            // routing: the rows stay in memory, the old file stays locked, and each recording
            // tries the rewrite again (see `take_file_error`).
            Err(e) => {
                journal.file_error = Some(format!("journal {}: cannot rewrite: {e}", path.display()));
                JournalFile {
                    path: path.to_path_buf(),
                    out: BufWriter::new(held),
                    lines: 0,
                    broken: true,
                }
            }
        };
        journal.file = Some(file);
        Ok((journal, loaded))
    }

    /// Records the pairs whose primary changed from the table `before` to the table `after`
    /// (backup-only changes are left out: media does not move with them). A table that moves
    /// more pairs than the journal holds keeps its last ones, and only those are named (see
    /// [`RouteTable::primary_changes`]). Returns the pairs whose primary changed and those
    /// whose backup alone did.
    pub fn record(&mut self, before: &RouteTable, after: &RouteTable) -> (usize, usize) {
        let moved = before.primary_changes(after, self.capacity);
        self.push(after.id(), after.computed_at_ms(), moved.total, moved.changes);
        (moved.total, moved.backup_only)
    }

    /// Appends the newest `named` of a table's `total` primary changes, evicting the oldest
    /// rows for room; changes left unnamed count as evicted at once.
    fn push(&mut self, table: TableId, at_ms: u64, total: usize, named: Vec<RowChange>) {
        debug_assert!(named.len() <= total);
        let unnamed = total - named.len();
        let rows = named.into_iter().map(|c| JournalRow {
            table,
            at_ms,
            src: c.src,
            dst: c.dst,
            before: c.primary_before,
            after: c.primary_after,
            cost_before: c.cost_before,
            cost_after: c.cost_after,
            reason: reason_text(&c.reason),
        });
        self.append(unnamed, rows.collect());
    }

    /// Appends a table's named rows, evicting the oldest for room; `unnamed` more changes of
    /// that table count as evicted at once.
    fn append(&mut self, unnamed: usize, named: Vec<JournalRow>) {
        debug_assert!(named.len() <= self.capacity);
        let out = (self.rows.len() + named.len()).saturating_sub(self.capacity);
        self.rows.drain(..out);
        self.evicted += (unnamed + out) as u64;
        let new = self.rows.len();
        self.rows.extend(named);
        if let Some(file) = &mut self.file
            && let Err(e) = file.append(&self.rows, new, self.capacity)
        {
            self.file_error = Some(format!("journal {}: {e}", file.path.display()));
        }
    }

    /// The last failure to write the journal's file since this was last asked, if any. The
    /// rows stay in memory, and the next recording rewrites the file whole.
    pub fn take_file_error(&mut self) -> Option<String> {
        self.file_error.take()
    }

    /// Records the pairs whose primary changed from one published table to the next, told
    /// from the per-site updates the agents are sent (what a follower reads from etcd, and
    /// what the leader has of a table it did not compute itself). Sites in ascending order,
    /// rows in the order they are sent; a pair in only one table counts as a change from or
    /// to no path. Returns the pairs whose primary changed and those whose backup alone did.
    pub fn record_updates(
        &mut self,
        before: &HashMap<SiteId, std::sync::Arc<pb::RouteUpdate>>,
        after: &HashMap<SiteId, std::sync::Arc<pb::RouteUpdate>>,
        table: TableId,
    ) -> (usize, usize) {
        let mut srcs: Vec<&SiteId> = before.keys().chain(after.keys()).collect();
        srcs.sort();
        srcs.dedup();
        let (mut total, mut backup_only) = (0usize, 0usize);
        let mut last: VecDeque<(&SiteId, &str, Option<&pb::RouteRow>, Option<&pb::RouteRow>)> =
            VecDeque::with_capacity(self.capacity.min(4_096));
        for src in srcs {
            let old = before.get(src).map_or(&[][..], |u| u.rows.as_slice());
            let new = after.get(src).map_or(&[][..], |u| u.rows.as_slice());
            pair_rows(old, new, |dst, x, y| {
                if primary(x) != primary(y) {
                    total += 1;
                    if self.capacity > 0 {
                        if last.len() == self.capacity {
                            last.pop_front();
                        }
                        last.push_back((src, dst, x, y));
                    }
                } else if backup(x) != backup(y) {
                    backup_only += 1;
                }
            });
        }
        let at_ms = after.values().map(|u| u.computed_unix_ms).max().unwrap_or(0);
        let named: Vec<JournalRow> = last
            .into_iter()
            .filter_map(|(src, dst, x, y)| {
                Some(JournalRow {
                    table,
                    at_ms,
                    src: src.clone(),
                    dst: SiteId::new(dst).ok()?,
                    before: names(primary(x))?,
                    after: names(primary(y))?,
                    cost_before: cost(x),
                    cost_after: cost(y),
                    reason: y.map_or_else(|| reason_text(&Reason::NoRoute), |r| r.reason.clone()),
                })
            })
            .collect();
        let kept = named.len();
        self.append(total - kept, named);
        (total, backup_only)
    }

    /// Keeps at most `capacity` rows from now on (a configuration reload), evicting the
    /// oldest beyond it.
    pub fn set_capacity(&mut self, capacity: usize) {
        let out = self.rows.len().saturating_sub(capacity);
        self.rows.drain(..out);
        self.evicted += out as u64;
        self.capacity = capacity;
    }

    /// Rows kept now.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no row is kept.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The newest rows that match `q`, at most `q.limit` of them.
    pub fn query(&self, q: &JournalQuery) -> JournalPage {
        let mut rows = Vec::new();
        let mut more = 0;
        for r in self.rows.iter().rev() {
            if r.at_ms < q.since_ms {
                // Rows are in recording order, and tables are recorded as they are computed.
                break;
            }
            if q.site.as_ref().is_some_and(|s| !r.involves(s))
                || q.pair.as_ref().is_some_and(|(a, b)| (&r.src, &r.dst) != (a, b))
            {
                continue;
            }
            if rows.len() < q.limit {
                rows.push(r.clone());
            } else {
                more += 1;
            }
        }
        JournalPage {
            rows,
            more,
            evicted: self.evicted,
            oldest_ms: self.rows.front().map(|r| r.at_ms),
        }
    }
}

/// Calls `f` for every destination of one source site in either list of rows, with its row
/// before and after: in one pass when both lists name the same sites in the same order (the
/// usual case), else matched by name.
fn pair_rows<'a>(
    old: &'a [pb::RouteRow],
    new: &'a [pb::RouteRow],
    mut f: impl FnMut(&'a str, Option<&'a pb::RouteRow>, Option<&'a pb::RouteRow>),
) {
    if old.len() == new.len() && old.iter().zip(new).all(|(x, y)| x.dst == y.dst) {
        for (x, y) in old.iter().zip(new) {
            f(&y.dst, Some(x), Some(y));
        }
        return;
    }
    let by_dst: HashMap<&str, &pb::RouteRow> = old.iter().map(|r| (r.dst.as_str(), r)).collect();
    for y in new {
        f(&y.dst, by_dst.get(y.dst.as_str()).copied(), Some(y));
    }
    let kept: HashSet<&str> = new.iter().map(|r| r.dst.as_str()).collect();
    for x in old.iter().filter(|x| !kept.contains(x.dst.as_str())) {
        f(&x.dst, Some(x), None);
    }
}

/// A row's primary path (empty: no path, or no row).
fn primary(r: Option<&pb::RouteRow>) -> &[String] {
    r.and_then(|r| r.primary.as_ref())
        .map_or(&[], |p| p.sites.as_slice())
}

/// A row's backup path (empty: none).
fn backup(r: Option<&pb::RouteRow>) -> &[String] {
    r.and_then(|r| r.backup.as_ref())
        .map_or(&[], |p| p.sites.as_slice())
}

/// A row's primary cost, ms, when it has a path.
fn cost(r: Option<&pb::RouteRow>) -> Option<f32> {
    r.and_then(|r| r.primary.as_ref())
        .filter(|p| !p.sites.is_empty())
        .map(|p| p.cost_ms as f32)
}

/// A path's sites as ids: `Some(None)` for no path, `None` when a name is not a site id
/// (the row is left out; the leader validated what it wrote).
fn names(p: &[String]) -> Option<Option<Vec<SiteId>>> {
    if p.is_empty() {
        return Some(None);
    }
    p.iter()
        .map(|s| SiteId::new(s).ok())
        .collect::<Option<Vec<_>>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use topology::{
        EngineConfig, Epoch, Inventory, LinkHealth, LinkMetrics, RouteEngine, Site, SwitchReason, Version,
        World,
    };

    fn id(v: u64) -> TableId {
        TableId {
            epoch: Epoch(1),
            version: Version(v),
        }
    }

    fn site(s: &str) -> SiteId {
        SiteId::new(s).unwrap()
    }

    fn path(p: &[&str]) -> Option<Vec<SiteId>> {
        Some(p.iter().map(|s| site(s)).collect())
    }

    fn change(src: &str, dst: &str, before: &[&str], after: &[&str]) -> RowChange {
        RowChange {
            src: site(src),
            dst: site(dst),
            primary_before: path(before),
            primary_after: path(after),
            backup_before: None,
            backup_after: None,
            cost_before: Some(100.0),
            cost_after: Some(80.0),
            reason: Reason::Switched(SwitchReason::CurrentDown),
        }
    }

    /// Records one table's changes, all of them named.
    fn push(j: &mut Journal, v: u64, at_ms: u64, changes: Vec<RowChange>) {
        j.push(id(v), at_ms, changes.len(), changes);
    }

    fn all(limit: usize) -> JournalQuery {
        JournalQuery {
            limit,
            ..Default::default()
        }
    }

    /// Three sites, a–b direct; then its link down both ways: both directions move to a
    /// relay at once.
    fn three_sites_then_a_b_down() -> (RouteTable, RouteTable) {
        let inv = Inventory::new(
            ["a", "b", "c"]
                .iter()
                .map(|s| Site::new(s, "r", "aws", 0.0, 0.0, 100).unwrap())
                .collect(),
        )
        .unwrap();
        let mut w = World::new(inv);
        for x in ["a", "b", "c"] {
            for y in ["a", "b", "c"] {
                if x != y {
                    w.set_link(&site(x), &site(y), LinkMetrics::rtt(40.0), LinkHealth::Up)
                        .unwrap();
                }
            }
        }
        let mut e = RouteEngine::new(EngineConfig::default(), Epoch(3), Version(1)).unwrap();
        let t1 = e.compute(&w, 1_000).table;
        for (x, y) in [("a", "b"), ("b", "a")] {
            w.set_link(&site(x), &site(y), LinkMetrics::rtt(40.0), LinkHealth::Down)
                .unwrap();
        }
        let t2 = e.compute(&w, 2_000).table;
        (t1, t2)
    }

    #[test]
    fn records_the_pairs_a_table_moved_with_their_paths_and_reasons() {
        let (t1, t2) = three_sites_then_a_b_down();
        let mut j = Journal::new(100);
        let (primary, _) = j.record(&t1, &t2);
        assert_eq!(primary, 2);
        let page = j.query(&all(10));
        let rows: Vec<String> = page
            .rows
            .iter()
            .map(|r| format!("{}>{} {:?}", r.src, r.dst, r.after.as_ref().map(Vec::len)))
            .collect();
        assert_eq!(
            rows,
            ["b>a Some(3)", "a>b Some(3)"],
            "newest (last in table order) first"
        );
        let ab = &page.rows[1];
        assert_eq!(ab.before, path(&["a", "b"]));
        assert_eq!(ab.after, path(&["a", "c", "b"]));
        assert_eq!((ab.table, ab.at_ms), (t2.id(), 2_000));
        assert!(
            ab.reason == "switched: the path in use lost a link or a relay",
            "{ab:?}"
        );
        // A journal of one row keeps the newest and counts the other as evicted.
        let mut one = Journal::new(1);
        assert_eq!(one.record(&t1, &t2).0, 2);
        let page = one.query(&all(10));
        assert_eq!((page.rows.len(), page.evicted), (1, 1));
        assert_eq!(page.rows[0].src, site("b"));
        assert_eq!(one.record(&t2, &t2), (0, 0));
    }

    /// Each site's update of a table, as the leader writes them to etcd.
    fn updates(t: &RouteTable) -> HashMap<SiteId, std::sync::Arc<pb::RouteUpdate>> {
        ["a", "b", "c"]
            .iter()
            .map(|s| {
                let st = t.site_table(&site(s)).unwrap();
                let u = pb::RouteUpdate {
                    computed_unix_ms: st.computed_at_ms,
                    rows: st.rows.iter().map(crate::core::row).collect(),
                    ..Default::default()
                };
                (site(s), std::sync::Arc::new(u))
            })
            .collect()
    }

    #[test]
    fn a_follower_records_from_the_sites_updates_what_the_leader_records_from_its_tables() {
        let (t1, t2) = three_sites_then_a_b_down();
        let mut leader = Journal::new(100);
        let counts = leader.record(&t1, &t2);
        let mut follower = Journal::new(100);
        assert_eq!(
            follower.record_updates(&updates(&t1), &updates(&t2), t2.id()),
            counts
        );
        let (l, f) = (leader.query(&all(10)), follower.query(&all(10)));
        assert_eq!(l.rows.len(), 2);
        assert_eq!(f, l, "the same rows, costs, times and reasons");
        // Nothing moved: nothing recorded.
        assert_eq!(
            follower.record_updates(&updates(&t2), &updates(&t2), t2.id()),
            (0, 0)
        );
        // A one-row journal names the newest change and counts the other as evicted.
        let mut one = Journal::new(1);
        assert_eq!(one.record_updates(&updates(&t1), &updates(&t2), t2.id()).0, 2);
        let page = one.query(&all(10));
        assert_eq!((page.rows.len(), page.evicted), (1, 1));
        assert_eq!(page.rows[0].src, site("b"));
    }

    #[test]
    fn rows_in_another_order_are_matched_by_name_and_a_pair_that_left_moves_to_no_path() {
        let (t1, t2) = three_sites_then_a_b_down();
        let before = updates(&t1);
        let mut after = updates(&t1);
        // a's rows reordered, and its row to c gone (c left the table).
        let rows = &mut std::sync::Arc::make_mut(after.get_mut(&site("a")).unwrap()).rows;
        rows.reverse();
        rows.retain(|r| r.dst != "c");
        let mut j = Journal::new(100);
        assert_eq!(j.record_updates(&before, &after, t2.id()), (1, 0));
        let page = j.query(&all(10));
        assert_eq!(page.rows.len(), 1, "{page:?}");
        let r = &page.rows[0];
        assert_eq!((r.src.as_str(), r.dst.as_str()), ("a", "c"));
        assert_eq!((r.before.clone(), r.after.clone()), (path(&["a", "c"]), None));
        assert_eq!(r.cost_after, None);
        assert_eq!(r.reason, reason_text(&Reason::NoRoute));
        // A site whose update is gone: every one of its pairs moved to no path.
        let mut gone = updates(&t1);
        gone.remove(&site("b"));
        assert_eq!(j.record_updates(&before, &gone, t2.id()).0, 2);
    }

    #[test]
    fn a_site_matches_as_an_end_or_a_relay_before_or_after() {
        let mut j = Journal::new(100);
        push(
            &mut j,
            2,
            1_000,
            vec![
                change("a", "b", &["a", "m", "b"], &["a", "b"]),
                change("c", "d", &["c", "d"], &["c", "m", "d"]),
                change("a", "d", &["a", "d"], &["a", "c", "d"]),
            ],
        );
        let pairs = |s: &str| -> Vec<String> {
            j.query(&JournalQuery {
                site: Some(site(s)),
                limit: 10,
                ..Default::default()
            })
            .rows
            .iter()
            .map(|r| format!("{}>{}", r.src, r.dst))
            .collect()
        };
        assert_eq!(pairs("m"), ["c>d", "a>b"]);
        assert_eq!(pairs("c"), ["a>d", "c>d"]);
        assert!(pairs("z").is_empty());
        // A pair is ordered: a → d's rows, not d → a's, nor the other pairs of a.
        let ad = j.query(&JournalQuery {
            pair: Some((site("a"), site("d"))),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(ad.rows.len(), 1);
        assert_eq!(ad.rows[0].after, path(&["a", "c", "d"]));
        let da = j.query(&JournalQuery {
            pair: Some((site("d"), site("a"))),
            limit: 10,
            ..Default::default()
        });
        assert!(da.rows.is_empty());
    }

    #[test]
    fn since_and_limit_cut_the_page_and_say_how_much_they_left() {
        let mut j = Journal::new(100);
        for v in 2..12 {
            push(
                &mut j,
                v,
                v * 1_000,
                vec![change("a", "b", &["a", "b"], &["a", "c", "b"])],
            );
        }
        let page = j.query(&JournalQuery {
            since_ms: 5_000,
            limit: 3,
            ..Default::default()
        });
        let versions: Vec<u64> = page.rows.iter().map(|r| r.table.version.0).collect();
        assert_eq!(versions, [11, 10, 9]);
        assert_eq!(page.more, 4, "versions 8 down to 5 matched too");
        assert_eq!((page.evicted, page.oldest_ms), (0, Some(2_000)));
    }

    #[test]
    fn a_full_journal_evicts_its_oldest_rows_and_counts_them() {
        let mut j = Journal::new(3);
        for v in 2..7 {
            push(
                &mut j,
                v,
                v * 1_000,
                vec![change("a", "b", &["a", "b"], &["a", "c", "b"])],
            );
        }
        assert_eq!(j.len(), 3);
        let page = j.query(&all(10));
        assert_eq!(page.evicted, 2);
        assert_eq!(page.oldest_ms, Some(4_000));
        // A smaller journal (a reload) keeps the newest.
        j.set_capacity(1);
        let page = j.query(&all(10));
        assert_eq!(
            (page.rows.len(), page.evicted, page.oldest_ms),
            (1, 4, Some(6_000))
        );
        // Off: nothing kept, everything counted.
        let mut off = Journal::new(0);
        off.push(id(2), 1, 5, Vec::new());
        assert!(off.is_empty());
        assert_eq!(off.query(&all(10)).evicted, 5);
    }

    /// Lines in a journal file.
    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_journal_file_brings_the_rows_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let (t1, t2) = three_sites_then_a_b_down();
        let (mut j, loaded) = Journal::open(100, &path).unwrap();
        assert_eq!(loaded, Loaded::default(), "a new file");
        j.record(&t1, &t2);
        push(
            &mut j,
            9,
            9_000,
            vec![change("a", "c", &["a", "c"], &["a", "b", "c"])],
        );
        let before = j.query(&all(100));
        assert_eq!(before.rows.len(), 3);
        assert_eq!(lines(&path).len(), 3, "each recording reaches the file at once");
        drop(j);

        let (again, loaded) = Journal::open(100, &path).unwrap();
        assert_eq!(
            loaded,
            Loaded {
                rows: 3,
                evicted: 0,
                unreadable: 0
            }
        );
        // The same rows, to the reason and the cost, in the same order.
        assert_eq!(again.query(&all(100)).rows, before.rows);
        drop(again);

        // A smaller journal keeps the newest rows and counts the others as evicted.
        let (small, loaded) = Journal::open(1, &path).unwrap();
        assert_eq!((loaded.rows, loaded.evicted), (1, 2));
        let page = small.query(&all(10));
        assert_eq!(page.rows, before.rows[..1]);
        assert_eq!(page.evicted, 2);
        assert_eq!(lines(&path).len(), 1, "the file is rewritten with the rows kept");
    }

    #[test]
    fn lines_that_are_not_rows_are_dropped_counted_and_the_file_is_mended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let (t1, t2) = three_sites_then_a_b_down();
        let (mut j, _) = Journal::open(100, &path).unwrap();
        j.record(&t1, &t2);
        drop(j);
        let good = lines(&path);
        let row: serde_json::Value = serde_json::from_str(&good[0]).unwrap();
        let edited = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut r = row.clone();
            f(&mut r);
            r.to_string()
        };
        let bad = [
            "not json".to_string(),
            edited(&|r| r["cost_after"] = serde_json::json!(-1.0)),
            edited(&|r| r["after"] = serde_json::json!(["c", "b"])),
            edited(&|r| r["dst"] = r["src"].clone()),
            edited(&|r| r["src"] = serde_json::json!("not a site!")),
        ];
        // A good row between the bad ones, and a last row cut short by a crash.
        let text = format!(
            "{}\n{}\n\n{}\n{}",
            bad.join("\n"),
            good[0],
            good[1],
            &good[1][..good[1].len() / 2]
        );
        std::fs::write(&path, text).unwrap();

        let (mut j, loaded) = Journal::open(100, &path).unwrap();
        assert_eq!(
            loaded,
            Loaded {
                rows: 2,
                evicted: 0,
                unreadable: 6
            }
        );
        assert_eq!(lines(&path), good, "only the rows are written back");
        // The cut line is gone, so the next row starts a line of its own.
        push(
            &mut j,
            9,
            9_000,
            vec![change("a", "c", &["a", "c"], &["a", "b", "c"])],
        );
        drop(j);
        let (j, loaded) = Journal::open(100, &path).unwrap();
        assert_eq!((loaded.rows, loaded.unreadable), (3, 0));
        assert_eq!(j.query(&all(1)).rows[0].dst, site("c"));
    }

    #[test]
    fn one_file_serves_one_replica_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let (first, _) = Journal::open(10, &path).unwrap();
        let e = Journal::open(10, &path).unwrap_err().to_string();
        assert!(e.contains("in use by another controller"), "{e}");
        drop(first);
        Journal::open(10, &path).unwrap();
        let e = Journal::open(10, &dir.path().join("no/such/dir/journal"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot open"), "{e}");
    }

    #[test]
    fn the_file_is_rewritten_before_it_holds_twice_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let (mut j, _) = Journal::open(5, &path).unwrap();
        let mut longest = 0;
        for v in 1..=500 {
            push(
                &mut j,
                v,
                v * 1_000,
                vec![change("a", "b", &["a", "b"], &["a", "c", "b"])],
            );
            longest = longest.max(lines(&path).len());
        }
        assert!(longest <= 2 * 5 + 64, "{longest} lines");
        drop(j);
        let (j, loaded) = Journal::open(5, &path).unwrap();
        assert_eq!(loaded.rows, 5);
        let page = j.query(&all(10));
        assert_eq!(page.oldest_ms, Some(496_000), "the newest five");
    }

    #[test]
    fn a_failed_write_is_reported_once_and_the_next_recording_mends_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let (mut j, _) = Journal::open(100, &path).unwrap();
        push(
            &mut j,
            1,
            1_000,
            vec![change("a", "b", &["a", "b"], &["a", "c", "b"])],
        );
        // Every write now fails, as on a full disk.
        let full = File::options().write(true).open("/dev/full").unwrap();
        j.file.as_mut().unwrap().out = BufWriter::new(full);
        push(
            &mut j,
            2,
            2_000,
            vec![change("b", "a", &["b", "a"], &["b", "c", "a"])],
        );
        let e = j.take_file_error().expect("the failure is reported");
        assert!(e.contains("journal.jsonl"), "{e}");
        assert_eq!(j.take_file_error(), None, "once");
        assert_eq!(j.len(), 2, "the rows stay in memory");
        assert_eq!(lines(&path).len(), 1);
        // The next recording rewrites the file whole: nothing recorded is missing.
        push(
            &mut j,
            3,
            3_000,
            vec![change("a", "c", &["a", "c"], &["a", "b", "c"])],
        );
        assert_eq!(j.take_file_error(), None);
        assert_eq!(lines(&path).len(), 3);
        drop(j);
        let (j, _) = Journal::open(100, &path).unwrap();
        assert_eq!(j.len(), 3);
    }

    #[test]
    fn a_rewrite_that_fails_at_start_keeps_the_rows_and_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let (mut j, _) = Journal::open(100, &path).unwrap();
        push(
            &mut j,
            1,
            1_000,
            vec![change("a", "b", &["a", "b"], &["a", "c", "b"])],
        );
        drop(j);
        // The temporary file cannot be made (as on a full disk): the journal still opens.
        let tmp = dir.path().join("journal.jsonl.tmp");
        std::fs::create_dir(&tmp).unwrap();
        let (mut j, loaded) = Journal::open(100, &path).unwrap();
        assert_eq!(loaded.rows, 1);
        let e = j.take_file_error().expect("the failed rewrite is reported");
        assert!(e.contains("cannot rewrite"), "{e}");
        // Still locked against a second replica.
        assert!(Journal::open(100, &path).is_err());
        // Each recording tries again, and reports again while it fails.
        push(
            &mut j,
            2,
            2_000,
            vec![change("b", "a", &["b", "a"], &["b", "c", "a"])],
        );
        assert!(j.take_file_error().is_some());
        std::fs::remove_dir(&tmp).unwrap();
        push(
            &mut j,
            3,
            3_000,
            vec![change("a", "c", &["a", "c"], &["a", "b", "c"])],
        );
        assert_eq!(j.take_file_error(), None);
        assert_eq!(
            lines(&path).len(),
            3,
            "every row, the ones recorded meanwhile too"
        );
    }
}
