//! Whatever probers report, the controller's ingest never panics, a refused window changes
//! nothing, and nothing it let in makes a link's state or a route's cost anything but a
//! finite, sane number. Random sequences of windows, mostly plausible, with every kind of bad
//! value mixed in: unknown and self links, windows reported for another site, counts that do
//! not add up or overflow, NaN, infinite, negative and absurd times, stamps in the future and
//! replays.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use controller::core::Core;
use controller::store::Snapshot;
use controller::{ControllerConfig, ControllerError};
use proptest::prelude::*;
use proto::v1 as pb;
use topology::{LinkState, SiteId};

const SITES: [&str; 4] = ["a", "b", "c", "d"];

fn core() -> Core {
    let sites: String = SITES
        .iter()
        .map(|s| format!("[[sites]]\nid = \"{s}\"\nregion = \"r-{s}\"\n"))
        .collect();
    let cfg = ControllerConfig::from_toml(&sites).unwrap();
    let inv = cfg.validate().unwrap();
    Core::new(cfg, inv, &Snapshot::default()).unwrap()
}

fn millis() -> impl Strategy<Value = f64> {
    prop_oneof![
        40 => 1.0..400.0f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(-5.0),
        1 => Just(1e12),
        1 => Just(0.0),
    ]
}

fn count() -> impl Strategy<Value = u32> {
    prop_oneof![30 => 0u32..40, 1 => Just(u32::MAX), 1 => 1_000u32..100_000]
}

/// One report: the window, who sent it, and how far the clock moved before it (ms).
#[derive(Debug, Clone)]
struct Report {
    window: pb::LinkWindow,
    reporter: String,
    advance_ms: u64,
    /// Where the window's end lies from now, ms (negative: in the past).
    skew_ms: i64,
}

fn report() -> impl Strategy<Value = Report> {
    let site = || prop_oneof![12 => prop::sample::select(&SITES[..]), 1 => Just("zz")];
    (
        (site(), site(), prop::bool::weighted(0.95)),
        (count(), 0u32..12, count(), prop::bool::weighted(0.9)),
        (millis(), millis(), millis(), millis()),
        (
            0u64..2_000,
            prop_oneof![20 => -3_000i64..0, 1 => 1i64..100_000_000],
        ),
    )
        .prop_map(
            |(
                (from, to, honest),
                (sent, lost_small, lost_any, plausible),
                (p50, p90, p99, jitter),
                (advance_ms, skew_ms),
            )| {
                // Mostly a window that adds up; sometimes whatever the counts say.
                let (received, lost) = if plausible {
                    let lost = lost_small.min(sent);
                    (sent - lost, lost)
                } else {
                    (sent, lost_any)
                };
                Report {
                    window: pb::LinkWindow {
                        from: from.into(),
                        to: to.into(),
                        sent,
                        received,
                        lost,
                        rtt_p50_ms: p50,
                        rtt_p90_ms: p90.max(p50),
                        rtt_p99_ms: p99.max(p90),
                        jitter_ms: jitter / 10.0,
                        ..Default::default()
                    },
                    reporter: if honest { from.into() } else { "b".into() },
                    advance_ms,
                    skew_ms,
                }
            },
        )
}

fn states(c: &Core) -> Vec<Option<LinkState>> {
    let n = SITES.len();
    (0..n)
        .flat_map(|a| (0..n).map(move |b| (a, b)))
        .map(|(a, b)| c.link_state(a, b).cloned())
        .collect()
}

/// Every link's view and every route's cost, finite and in range.
fn sane(c: &mut Core, now: u64) -> Result<(), String> {
    let comp = c.compute(now);
    for a in 0..SITES.len() {
        for b in 0..SITES.len() {
            let Some(v) = c.world().links.get(a as u16, b as u16) else {
                continue;
            };
            let m = &v.metrics;
            let ok = m.rtt_ms.is_finite()
                && m.rtt_ms >= 0.0
                && (0.0..=1.0).contains(&m.loss)
                && m.jitter_ms.is_finite()
                && m.jitter_ms >= 0.0
                && m.loss_se.is_finite();
            if !ok {
                return Err(format!("link {a}→{b}: {m:?}"));
            }
        }
    }
    for src in SITES {
        for e in comp.table.site_table(&SiteId::new(src).unwrap()).unwrap().rows {
            let costs = [Some(e.primary_cost), e.backup_cost];
            if costs.iter().flatten().any(|c| !c.is_finite() || *c < 0.0) && !e.primary.is_empty() {
                return Err(format!("route {}→{}: {e:?}", e.src, e.dst));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn bad_reports_change_nothing_and_nothing_let_in_spoils_a_link_or_a_route(
        reports in prop::collection::vec(report(), 1..80),
    ) {
        let mut c = core();
        let mut now: u64 = 1_000_000_000;
        let mut taken = 0;
        for (i, r) in reports.iter().enumerate() {
            now += r.advance_ms;
            let mut w = r.window.clone();
            w.end_unix_ms = now.saturating_add_signed(r.skew_ms);
            let before = states(&c);
            match c.window(&w, &SiteId::new(&r.reporter).unwrap(), now) {
                Ok(_) => taken += 1,
                Err(ControllerError::Rejected { .. }) => {
                    prop_assert!(states(&c) == before, "a refused window changed a link: {w:?}");
                }
                Err(e) => prop_assert!(false, "not a rejection: {e}"),
            }
            if i % 10 == 9 {
                prop_assert_eq!(sane(&mut c, now), Ok(()));
            }
        }
        prop_assert_eq!(sane(&mut c, now), Ok(()));
        prop_assert!(taken <= reports.len());
    }
}
