//! The table an agent holds: validated, immutable once applied, persisted as last-known-good.
//!
//! Validation is pure and total: an update names only known sites, every path starts at this
//! site and ends at its row's destination, visits no site twice, relays at most `max_relays`
//! times, costs are finite, and `(epoch, version)` moves forward. Anything else is refused
//! whole — a table is applied entirely or not at all.

use std::collections::HashSet;

use proto::v1 as pb;

use crate::error::AgentError;

/// A table that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The update as received (it is also what is persisted).
    pub update: pb::RouteUpdate,
    /// When this agent applied it, Unix ms.
    pub applied_unix_ms: u64,
}

impl Table {
    /// `(epoch, version)`.
    pub fn version(&self) -> (u64, u64) {
        version(&self.update)
    }

    /// The row towards `dst`.
    pub fn row(&self, dst: &str) -> Option<&pb::RouteRow> {
        self.update.rows.iter().find(|r| r.dst == dst)
    }

    /// Whether this agent's site is drained.
    pub fn site_drained(&self) -> bool {
        self.update.drained_sites.contains(&self.update.site)
    }
}

/// `(epoch, version)` of an update.
pub fn version(u: &pb::RouteUpdate) -> (u64, u64) {
    u.version.as_ref().map_or((0, 0), |v| (v.epoch, v.version))
}

fn check_path(
    p: &pb::RoutePath,
    src: &str,
    dst: &str,
    known: &HashSet<&str>,
    max_relays: u32,
) -> Result<(), String> {
    let s = &p.sites;
    if s.len() < 2 {
        return Err(format!("path to {dst} has {} sites", s.len()));
    }
    if s[0] != src || s[s.len() - 1] != dst {
        return Err(format!("path {s:?} does not run from {src} to {dst}"));
    }
    if s.len() - 2 > max_relays as usize {
        return Err(format!("path {s:?} has more than {max_relays} relays"));
    }
    let mut seen = HashSet::new();
    for site in s {
        if !known.contains(site.as_str()) {
            return Err(format!("path {s:?} names unknown site {site}"));
        }
        if !seen.insert(site.as_str()) {
            return Err(format!("path {s:?} visits {site} twice"));
        }
    }
    if !(p.cost_ms.is_finite() && p.cost_ms >= 0.0 && p.mos.is_finite() && p.r_factor.is_finite()) {
        return Err(format!(
            "path {s:?} has cost {}, MOS {} and R-factor {}",
            p.cost_ms, p.mos, p.r_factor
        ));
    }
    Ok(())
}

/// Checks an update for `site` against the table held; returns it ready to apply.
pub fn validate(
    update: pb::RouteUpdate,
    site: &str,
    held: Option<(u64, u64)>,
    now_ms: u64,
) -> Result<Table, AgentError> {
    let invalid = |m: String| Err(AgentError::Invalid(m));
    let got = version(&update);
    if update.version.is_none() || got == (0, 0) {
        return invalid("no version".into());
    }
    if let Some(held) = held
        && got <= held
    {
        return Err(AgentError::Stale { got, held });
    }
    if update.site != site {
        return invalid(format!(
            "update for site {} sent to an agent of {site}",
            update.site
        ));
    }
    if update.max_relays > 2 {
        return invalid(format!("max_relays {} (at most 2)", update.max_relays));
    }
    let known: HashSet<&str> = update.known_sites.iter().map(String::as_str).collect();
    if !known.contains(site) {
        return invalid(format!("this site {site} is not among the known sites"));
    }
    let mut dsts = HashSet::new();
    for r in &update.rows {
        if !known.contains(r.dst.as_str()) {
            return invalid(format!("row to unknown site {}", r.dst));
        }
        if r.dst == site || !dsts.insert(r.dst.as_str()) {
            return invalid(format!("row to {} is repeated or points at this site", r.dst));
        }
        let Some(p) = &r.primary else {
            return invalid(format!("row to {} has no primary path", r.dst));
        };
        check_path(p, site, &r.dst, &known, update.max_relays).map_err(AgentError::Invalid)?;
        if let Some(b) = &r.backup {
            check_path(b, site, &r.dst, &known, update.max_relays).map_err(AgentError::Invalid)?;
        }
    }
    for d in &update.drained_sites {
        if !known.contains(d.as_str()) {
            return invalid(format!("drained site {d} is unknown"));
        }
    }
    Ok(Table {
        update,
        applied_unix_ms: now_ms,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn path(sites: &[&str]) -> pb::RoutePath {
        pb::RoutePath {
            sites: sites.iter().map(|s| s.to_string()).collect(),
            cost_ms: 10.0,
            mos: 4.3,
            r_factor: 90.0,
        }
    }

    fn update(v: u64) -> pb::RouteUpdate {
        pb::RouteUpdate {
            version: Some(pb::TableVersion { epoch: 1, version: v }),
            nonce: "n".into(),
            site: "a".into(),
            computed_unix_ms: 1,
            rows: vec![
                pb::RouteRow {
                    dst: "b".into(),
                    primary: Some(path(&["a", "b"])),
                    backup: Some(path(&["a", "c", "b"])),
                    backup_disjoint: true,
                    reason: "direct".into(),
                },
                pb::RouteRow {
                    dst: "c".into(),
                    primary: Some(path(&["a", "b", "d", "c"])),
                    ..Default::default()
                },
            ],
            drains: vec![],
            drained_sites: vec![],
            known_sites: ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect(),
            max_relays: 2,
        }
    }

    #[test]
    fn a_good_update_is_accepted() {
        let t = validate(update(3), "a", Some((1, 2)), 9).unwrap();
        assert_eq!(t.version(), (1, 3));
        assert_eq!(t.row("c").unwrap().primary.as_ref().unwrap().sites.len(), 4);
        assert!(!t.site_drained());
    }

    #[test]
    fn older_or_equal_versions_are_refused_and_epochs_order_first() {
        assert!(matches!(
            validate(update(3), "a", Some((1, 3)), 0),
            Err(AgentError::Stale { .. })
        ));
        assert!(matches!(
            validate(update(9), "a", Some((2, 1)), 0),
            Err(AgentError::Stale { .. })
        ));
        let mut newer_epoch = update(1);
        newer_epoch.version = Some(pb::TableVersion { epoch: 2, version: 1 });
        assert!(validate(newer_epoch, "a", Some((1, 99)), 0).is_ok());
    }

    #[test]
    fn every_kind_of_bad_table_is_refused_with_its_reason() {
        type Mutation = Box<dyn Fn(&mut pb::RouteUpdate)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|u| u.site = "b".into()), "sent to an agent"),
            (
                Box::new(|u| u.rows[0].primary = Some(path(&["a", "x", "b"]))),
                "unknown site x",
            ),
            (
                Box::new(|u| u.rows[0].primary = Some(path(&["a", "c", "a", "b"]))),
                "twice",
            ),
            (
                Box::new(|u| u.rows[0].primary = Some(path(&["a", "c", "d", "e", "b"]))),
                "relays",
            ),
            (
                Box::new(|u| u.rows[0].primary = Some(path(&["b", "a"]))),
                "does not run",
            ),
            (Box::new(|u| u.rows[0].dst = "a".into()), "repeated or points"),
            (Box::new(|u| u.rows[1].dst = "b".into()), "repeated or points"),
            (Box::new(|u| u.rows[0].primary = None), "no primary"),
            (
                Box::new(|u| u.rows[0].primary.as_mut().unwrap().cost_ms = f64::NAN),
                "cost",
            ),
            (Box::new(|u| u.version = None), "no version"),
            (Box::new(|u| u.max_relays = 7), "max_relays"),
        ];
        for (mutate, needle) in cases {
            let mut u = update(5);
            mutate(&mut u);
            let e = validate(u, "a", None, 0).unwrap_err().to_string();
            assert!(e.contains(needle), "`{e}` should mention `{needle}`");
        }
    }
}
