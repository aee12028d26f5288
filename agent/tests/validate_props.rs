//! Whatever arrives on the watch stream, the agent's validation never panics, and it accepts
//! an update exactly when the update meets the contract, written here once more in the
//! plainest terms: known sites only, every path from this site to its row's destination
//! without a repeated site or too many relays, finite costs, one row per destination, and a
//! version newer than the one held. Random updates near the valid ones, so that both
//! outcomes are common.

use std::collections::HashSet;

use agent::table::validate;
use proptest::prelude::*;
use proto::v1 as pb;

/// Sites an update may name: four the mesh knows, and one it does not.
const POOL: [&str; 5] = ["a", "b", "c", "d", "zz"];
const KNOWN: [&str; 4] = ["a", "b", "c", "d"];

fn site() -> impl Strategy<Value = String> {
    // Mostly known sites; now and then the stranger.
    prop_oneof![9 => prop::sample::select(&KNOWN[..]), 1 => Just(POOL[4])].prop_map(String::from)
}

fn cost() -> impl Strategy<Value = f64> {
    prop_oneof![
        60 => 0.0..500.0f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(-1.0),
    ]
}

/// A path for the row `a → dst`: usually well formed (distinct relays other than its ends),
/// sometimes not.
fn path(dst: String) -> BoxedStrategy<pb::RoutePath> {
    let others: Vec<&'static str> = KNOWN.iter().copied().filter(|s| *s != "a" && *s != dst).collect();
    let relays = prop::sample::subsequence(others, 0..=2).prop_shuffle();
    let stray = prop::option::weighted(0.05, site());
    (relays, stray, cost(), cost(), cost(), any::<u8>())
        .prop_map(move |(relays, stray, cost_ms, mos, r, shape)| {
            let mut sites = vec!["a".to_string()];
            sites.extend(relays.into_iter().map(String::from));
            sites.extend(stray);
            sites.push(dst.clone());
            match shape % 64 {
                0 => sites.clear(),
                1 => {
                    sites.pop();
                }
                2 => sites.reverse(),
                _ => {}
            }
            pb::RoutePath {
                sites,
                cost_ms,
                mos: if mos.is_finite() { 4.0 } else { mos },
                r_factor: if r.is_finite() { 90.0 } else { r },
            }
        })
        .boxed()
}

fn row(dst: String) -> BoxedStrategy<pb::RouteRow> {
    (
        prop::option::weighted(0.98, path(dst.clone())),
        prop::option::of(path(dst.clone())),
    )
        .prop_map(move |(primary, backup)| pb::RouteRow {
            dst: dst.clone(),
            primary,
            backup,
            backup_disjoint: false,
            reason: "direct".into(),
        })
        .boxed()
}

/// Rows for some of the other known sites, and now and then one more to any site (this one,
/// a stranger, or a destination already listed).
fn rows() -> impl Strategy<Value = Vec<pb::RouteRow>> {
    let dsts = prop::sample::subsequence(vec!["b", "c", "d"], 0..=3);
    let extra = prop::option::weighted(0.05, site().prop_flat_map(row));
    (dsts, extra).prop_flat_map(|(dsts, extra)| {
        let listed: Vec<_> = dsts.into_iter().map(|d| row(d.to_string()).boxed()).collect();
        listed.prop_map(move |mut rows| {
            rows.extend(extra.clone());
            rows
        })
    })
}

fn update() -> impl Strategy<Value = pb::RouteUpdate> {
    let version = prop_oneof![
        8 => (Just(2u64), 0u64..5),
        1 => (Just(1u64), 0u64..5),
        1 => Just((0u64, 0u64)),
    ];
    (
        rows(),
        prop_oneof![9 => 0u32..=2, 1 => 3u32..5],
        version,
        prop_oneof![19 => Just("a".to_string()), 1 => Just("b".to_string())],
        prop::collection::vec(site(), 0..2),
        prop::bool::weighted(0.95),
    )
        .prop_map(|(rows, max_relays, (epoch, version), site, drained, know_a)| {
            let mut known: Vec<String> = KNOWN.iter().map(|s| s.to_string()).collect();
            if !know_a {
                known.retain(|s| s != "a");
            }
            pb::RouteUpdate {
                version: Some(pb::TableVersion { epoch, version }),
                nonce: "n".into(),
                site,
                computed_unix_ms: 1,
                rows,
                drains: vec![],
                drained_sites: drained,
                known_sites: known,
                max_relays,
            }
        })
}

/// The contract, spelled out.
fn acceptable(u: &pb::RouteUpdate, held: (u64, u64)) -> bool {
    let known: HashSet<&str> = u.known_sites.iter().map(String::as_str).collect();
    let v = u.version.as_ref().map_or((0, 0), |v| (v.epoch, v.version));
    let path_ok = |p: &pb::RoutePath, dst: &str| {
        let s: Vec<&str> = p.sites.iter().map(String::as_str).collect();
        let distinct: HashSet<&str> = s.iter().copied().collect();
        s.len() >= 2
            && s.first() == Some(&"a")
            && s.last() == Some(&dst)
            && s.len() - 2 <= u.max_relays as usize
            && distinct.len() == s.len()
            && s.iter().all(|x| known.contains(x))
            && p.cost_ms.is_finite()
            && p.cost_ms >= 0.0
            && p.mos.is_finite()
            && p.r_factor.is_finite()
    };
    let dsts: HashSet<&str> = u.rows.iter().map(|r| r.dst.as_str()).collect();
    v != (0, 0)
        && v > held
        && u.site == "a"
        && u.max_relays <= 2
        && known.contains("a")
        && dsts.len() == u.rows.len()
        && u.rows.iter().all(|r| {
            r.dst != "a"
                && known.contains(r.dst.as_str())
                && r.primary.as_ref().is_some_and(|p| path_ok(p, &r.dst))
                && r.backup.as_ref().is_none_or(|b| path_ok(b, &r.dst))
        })
        && u.drained_sites.iter().all(|d| known.contains(d.as_str()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    #[test]
    fn validation_accepts_exactly_the_updates_that_meet_the_contract(u in update()) {
        let held = (1, 2);
        let want = acceptable(&u, held);
        let got = validate(u.clone(), "a", Some(held), 7);
        prop_assert_eq!(got.is_ok(), want, "{:?} for {:?}", got.as_ref().err(), u);
        if let Ok(t) = got {
            prop_assert_eq!(t.update, u);
            prop_assert_eq!(t.applied_unix_ms, 7);
        }
    }
}

/// The generator is worth something only if both outcomes are common.
#[test]
fn the_generated_updates_are_often_good_and_often_bad() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = update();
    let n = 2_000;
    let good = (0..n)
        .filter(|_| {
            let u = strategy.new_tree(&mut runner).map(|t| t.current());
            u.is_ok_and(|u| acceptable(&u, (1, 2)))
        })
        .count();
    assert!(
        (n / 10..=n * 9 / 10).contains(&good),
        "{good} of {n} generated updates are acceptable"
    );
}
