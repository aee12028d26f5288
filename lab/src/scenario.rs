//! Scenario files: a measured matrix, run settings and a fault timeline, in TOML.
//!
//! Paths in `[data]` are relative to the scenario file. Unknown keys, unknown sites, bad
//! targets and malformed CSV rows are refused with the file (and line, for CSV) named.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use topology::{Inventory, SiteId, World};

use crate::error::LabError;
use crate::targets::Targets;

/// Where the matrix comes from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFiles {
    /// `sites.csv`: `id,region,provider,lat,lon`.
    pub sites: PathBuf,
    /// `rtt.csv`: `src,dst,rtt_ms[,loss_pct,jitter_ms]`, round trip.
    pub rtt: PathBuf,
}

/// Noise added on every link.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Noise {
    /// Uniform jitter amplitude, ms, each way. Default 0.
    pub jitter_ms: f64,
    /// Random loss, percent, each way. Default 0.
    pub loss_pct: f64,
}

/// How the run goes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// Length of the run, seconds. Default 60.
    pub duration_s: f64,
    /// Probes per second per peer. Default 10.
    pub probe_hz: f64,
    /// Window length, seconds. Default 1.
    pub window_s: f64,
    /// Most relays on a path. Default 2.
    pub max_relays: u8,
    /// Controllers: 1 runs the embedded store (the only mode so far). Default 1.
    pub controllers: u32,
    /// Noise on every link.
    pub noise: Noise,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            duration_s: 60.0,
            probe_hz: 10.0,
            window_s: 1.0,
            max_relays: 2,
            controllers: 1,
            noise: Noise::default(),
        }
    }
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Drop everything on the target links.
    Blackhole,
    /// Add `value` loss (fraction) on the target links.
    Loss,
    /// Add `value` ms of delay on the target links (each way).
    Delay,
    /// Add `value` ms of jitter on the target links.
    Jitter,
    /// Every link of a site goes dark.
    SiteDown,
    /// Kill the leading controller like a crash, no resignation (needs several controllers);
    /// with a duration, it is started again after it and rejoins as a follower.
    ControllerKill,
    /// An operator drains a region.
    DrainRegion,
}

impl FaultKind {
    /// The name scenario files and reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Blackhole => "blackhole",
            FaultKind::Loss => "loss",
            FaultKind::Delay => "delay",
            FaultKind::Jitter => "jitter",
            FaultKind::SiteDown => "site_down",
            FaultKind::ControllerKill => "controller_kill",
            FaultKind::DrainRegion => "drain_region",
        }
    }
}

/// One fault as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// When, seconds from the start.
    pub at_s: f64,
    /// How long; absent = until the end.
    pub duration_s: Option<f64>,
    /// What.
    pub kind: FaultKind,
    /// `a->b`, `a<->b`, a site, or a region.
    #[serde(default)]
    pub target: String,
    /// Loss fraction, added ms, … by kind.
    #[serde(default)]
    pub value: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    data: DataFiles,
    #[serde(default)]
    run: RunSettings,
    #[serde(default)]
    fault: Vec<FaultSpec>,
    #[serde(default)]
    targets: Targets,
}

/// What a fault hits, resolved against the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Directed links `(from, to)`.
    Links(Vec<(SiteId, SiteId)>),
    /// A site (all its links both ways).
    Site(SiteId),
    /// A region.
    Region(topology::RegionId),
    /// Nothing (controller faults).
    None,
}

/// A fault resolved against the inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// As written.
    pub spec: FaultSpec,
    /// What it hits.
    pub target: Target,
}

/// A loaded, checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// The true matrix (every measured link up).
    pub world: World,
    /// Run settings.
    pub run: RunSettings,
    /// The timeline, by start time.
    pub faults: Vec<Fault>,
    /// What the run is judged against (`[targets]`; Axon's targets by default).
    pub targets: Targets,
}

fn resolve(inv: &Inventory, spec: &FaultSpec, file: &str) -> Result<Target, LabError> {
    let bad = |detail: String| LabError::Scenario {
        file: file.to_string(),
        detail,
    };
    let site = |s: &str| {
        let id = SiteId::new(s.trim()).map_err(|e| bad(format!("fault at {} s: {e}", spec.at_s)))?;
        inv.index_of(&id)
            .map(|_| id.clone())
            .ok_or_else(|| bad(format!("fault at {} s: unknown site `{id}`", spec.at_s)))
    };
    Ok(match spec.kind {
        FaultKind::ControllerKill => Target::None,
        FaultKind::DrainRegion => {
            let r = topology::RegionId::new(spec.target.trim()).map_err(|e| bad(e.to_string()))?;
            if !inv.sites().iter().any(|s| s.region == r) {
                return Err(bad(format!("fault at {} s: unknown region `{r}`", spec.at_s)));
            }
            Target::Region(r)
        }
        FaultKind::SiteDown => Target::Site(site(&spec.target)?),
        _ => {
            if let Some((a, b)) = spec.target.split_once("<->") {
                let (a, b) = (site(a)?, site(b)?);
                Target::Links(vec![(a.clone(), b.clone()), (b, a)])
            } else if let Some((a, b)) = spec.target.split_once("->") {
                Target::Links(vec![(site(a)?, site(b)?)])
            } else {
                return Err(bad(format!(
                    "fault at {} s: target `{}` must be `a->b` or `a<->b`",
                    spec.at_s, spec.target
                )));
            }
        }
    })
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, LabError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| LabError::Scenario {
            file: file.clone(),
            detail: e.to_string(),
        })?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")), &file)
    }

    /// Parses a scenario whose data paths are relative to `base`.
    pub fn parse(text: &str, base: &Path, file: &str) -> Result<Scenario, LabError> {
        let bad = |detail: String| LabError::Scenario {
            file: file.to_string(),
            detail,
        };
        let f: ScenarioFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let read = |p: &Path| {
            let full = base.join(p);
            std::fs::read_to_string(&full)
                .map(|t| (full.display().to_string(), t))
                .map_err(|e| LabError::Scenario {
                    file: full.display().to_string(),
                    detail: e.to_string(),
                })
        };
        let (sites_name, sites) = read(&f.data.sites)?;
        let (rtt_name, rtt) = read(&f.data.rtt)?;
        let world = topology::data::world_from_csv(&sites_name, &sites, &rtt_name, &rtt)?;
        let r = &f.run;
        if !(r.duration_s > 0.0 && r.duration_s <= 86_400.0) {
            return Err(bad(format!(
                "run.duration_s {} must be in (0, 86400]",
                r.duration_s
            )));
        }
        if !(r.probe_hz >= 1.0 && r.probe_hz <= 100.0) {
            return Err(bad(format!("run.probe_hz {} must be in [1, 100]", r.probe_hz)));
        }
        if !(r.window_s >= 1.0 / r.probe_hz && r.window_s <= 60.0) {
            return Err(bad(format!(
                "run.window_s {} must cover at least one probe and at most 60 s",
                r.window_s
            )));
        }
        if r.max_relays > 2 || r.controllers == 0 {
            return Err(bad("run.max_relays must be 0..=2 and run.controllers ≥ 1".into()));
        }
        if r.controllers > 5 {
            return Err(bad("run.controllers is above 5".into()));
        }
        let n = r.noise;
        if !(n.jitter_ms >= 0.0 && n.jitter_ms < 1_000.0 && n.loss_pct >= 0.0 && n.loss_pct < 100.0) {
            return Err(bad(
                "run.noise: jitter_ms in [0, 1000), loss_pct in [0, 100)".into()
            ));
        }
        f.targets.validate().map_err(bad)?;
        let mut faults = Vec::new();
        for spec in f.fault {
            if !(spec.at_s >= 0.0 && spec.at_s < r.duration_s)
                || spec.duration_s.is_some_and(|d| d.is_nan() || d <= 0.0)
            {
                return Err(bad(format!(
                    "fault at {} s: at_s must be within the run, duration_s positive",
                    spec.at_s
                )));
            }
            if spec.kind == FaultKind::ControllerKill && r.controllers < 2 {
                return Err(bad("controller_kill needs run.controllers ≥ 2".into()));
            }
            if spec.kind == FaultKind::Loss && !(spec.value > 0.0 && spec.value <= 1.0) {
                return Err(bad(format!(
                    "fault at {} s: loss value {} must be a fraction in (0, 1]",
                    spec.at_s, spec.value
                )));
            }
            if matches!(spec.kind, FaultKind::Delay | FaultKind::Jitter)
                && !(spec.value > 0.0 && spec.value < 10_000.0)
            {
                return Err(bad(format!(
                    "fault at {} s: value {} ms must be positive",
                    spec.at_s, spec.value
                )));
            }
            let target = resolve(&world.inventory, &spec, file)?;
            faults.push(Fault { spec, target });
        }
        faults.sort_by(|a, b| a.spec.at_s.total_cmp(&b.spec.at_s));
        Ok(Scenario {
            name: f.name,
            world,
            run: f.run,
            faults,
            targets: f.targets,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("sites.csv"),
            "id,region,provider,lat,lon\na,r1,aws,0,0\nb,r2,gcp,10,10\nc,r2,gcp,20,20\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("rtt.csv"),
            "src,dst,rtt_ms\na,b,100\na,c,20\nb,c,20\n",
        )
        .unwrap();
        d
    }

    const GOOD: &str = r#"
name = "tiny"
[data]
sites = "sites.csv"
rtt = "rtt.csv"
[run]
duration_s = 30
noise = { jitter_ms = 1.0, loss_pct = 0.1 }
[[fault]]
at_s = 10
duration_s = 5
kind = "blackhole"
target = "a<->c"
[[fault]]
at_s = 5
kind = "drain_region"
target = "r2"
"#;

    #[test]
    fn a_good_scenario_loads_with_its_timeline_in_order() {
        let d = dir();
        let s = Scenario::parse(GOOD, d.path(), "tiny.toml").unwrap();
        assert_eq!(s.name, "tiny");
        assert_eq!(s.world.inventory.len(), 3);
        assert_eq!(s.faults.len(), 2);
        assert_eq!(s.faults[0].spec.kind, FaultKind::DrainRegion);
        assert_eq!(
            s.faults[1].target,
            Target::Links(vec![
                (SiteId::new("a").unwrap(), SiteId::new("c").unwrap()),
                (SiteId::new("c").unwrap(), SiteId::new("a").unwrap()),
            ])
        );
        assert_eq!(s.run.probe_hz, 10.0);
        assert_eq!(s.targets, Targets::default(), "no [targets]: Axon's own");
        let strict = format!("{GOOD}[targets]\nbrownout_s = 8\nmax_flaps_per_pair_hour = 0.5\n");
        let t = Scenario::parse(&strict, d.path(), "tiny.toml").unwrap().targets;
        assert_eq!((t.brownout_s, t.max_flaps_per_pair_hour), (8.0, Some(0.5)));
        assert_eq!(t.blackhole_p50_s, Targets::default().blackhole_p50_s);
    }

    #[test]
    fn every_scenario_in_the_repository_loads_under_its_file_name() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "toml") {
                continue;
            }
            let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            assert_eq!(s.name, stem, "{}", path.display());
            assert!(s.world.inventory.len() >= 6 && s.run.duration_s > 0.0);
            names.push(s.name);
        }
        names.sort();
        for expected in ["quick-6", "noise-6", "global-25", "blackhole-25"] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing: {names:?}"
            );
        }
    }

    #[test]
    fn every_mistake_names_the_file_and_what_is_wrong() {
        let d = dir();
        let cases = [
            (
                GOOD.replace("duration_s = 30", "duration_s = 30\nspeed = 3"),
                "speed",
            ),
            (GOOD.replace("a<->c", "a<->zz"), "unknown site `zz`"),
            (GOOD.replace("a<->c", "a c"), "must be `a->b`"),
            (GOOD.replace("\"r2\"", "\"mars\""), "unknown region"),
            (GOOD.replace("at_s = 10", "at_s = 99"), "within the run"),
            (GOOD.replace("blackhole", "meteor"), "meteor"),
            (GOOD.replace("rtt.csv", "nope.csv"), "nope.csv"),
            (format!("{GOOD}[targets]\nblackhole_p50 = 1\n"), "blackhole_p50"),
            (
                format!("{GOOD}[targets]\nwithin_2pct_of_oracle = 99\n"),
                "targets.within_2pct_of_oracle 99",
            ),
        ];
        for (text, needle) in cases {
            let e = Scenario::parse(&text, d.path(), "tiny.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "`{e}` should mention `{needle}`");
        }
        std::fs::write(d.path().join("rtt.csv"), "src,dst,rtt_ms\na,b,100\na,zz,20\n").unwrap();
        let e = Scenario::parse(GOOD, d.path(), "tiny.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rtt.csv:3") && e.contains("zz"), "{e}");
    }
}
