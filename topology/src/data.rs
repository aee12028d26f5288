//! Reading measured matrices: `sites.csv` (`id,region,provider,lat,lon`) and `rtt.csv`
//! (`src,dst,rtt_ms[,loss_pct,jitter_ms]`, round trip). Text in, checked values out — the
//! caller reads the files.
//!
//! A missing reverse direction mirrors the forward one; a pair absent both ways has no link.
//! Every error names the input and the line.

use crate::cost::LinkMetrics;
use crate::error::TopologyError;
use crate::link::LinkHealth;
use crate::site::{Inventory, Site, SiteId, SiteIdx};
use crate::world::World;

/// Capacity given to sites read from a matrix that has no capacity column, sessions.
pub const DEFAULT_CAPACITY: u32 = 1000;

fn parse_err(name: &str, line: usize, detail: impl Into<String>) -> TopologyError {
    TopologyError::Parse {
        source_name: name.to_owned(),
        line,
        detail: detail.into(),
    }
}

fn rows<'a>(
    name: &'a str,
    text: &'a str,
    header: &'a [&'a str],
) -> Result<impl Iterator<Item = (usize, Vec<&'a str>)> + 'a, TopologyError> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    let (_, head) = lines.next().ok_or_else(|| parse_err(name, 1, "empty input"))?;
    let cols: Vec<&str> = head.split(',').map(str::trim).collect();
    if cols.len() < header.len() || cols[..header.len()] != *header {
        return Err(parse_err(
            name,
            1,
            format!("header must start with `{}`", header.join(",")),
        ));
    }
    Ok(lines
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| (i, l.split(',').map(str::trim).collect())))
}

fn number(name: &str, line: usize, field: &str, v: &str) -> Result<f64, TopologyError> {
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| parse_err(name, line, format!("{field} `{v}` is not a number")))
}

/// Parses `sites.csv`. Sites are active with [`DEFAULT_CAPACITY`].
pub fn parse_sites(name: &str, text: &str) -> Result<Vec<Site>, TopologyError> {
    let mut out = Vec::new();
    for (line, f) in rows(name, text, &["id", "region", "provider", "lat", "lon"])? {
        if f.len() != 5 {
            return Err(parse_err(
                name,
                line,
                format!("expected 5 fields, found {}", f.len()),
            ));
        }
        let lat = number(name, line, "lat", f[3])?;
        let lon = number(name, line, "lon", f[4])?;
        let site = Site::new(f[0], f[1], f[2], lat, lon, DEFAULT_CAPACITY)
            .map_err(|e| parse_err(name, line, e.to_string()))?;
        out.push(site);
    }
    Ok(out)
}

/// One measured link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeasuredLink {
    /// Source.
    pub from: SiteIdx,
    /// Destination.
    pub to: SiteIdx,
    /// Metrics.
    pub metrics: LinkMetrics,
}

/// Parses `rtt.csv` against an inventory, mirroring missing reverse directions.
pub fn parse_rtt(name: &str, text: &str, inv: &Inventory) -> Result<Vec<MeasuredLink>, TopologyError> {
    let n = inv.len();
    let mut given: Vec<Option<LinkMetrics>> = vec![None; n * n];
    for (line, f) in rows(name, text, &["src", "dst", "rtt_ms"])? {
        if !(3..=5).contains(&f.len()) {
            return Err(parse_err(
                name,
                line,
                format!("expected 3 to 5 fields, found {}", f.len()),
            ));
        }
        let site = |v: &str| -> Result<SiteIdx, TopologyError> {
            let id = SiteId::new(v).map_err(|e| parse_err(name, line, e.to_string()))?;
            inv.index_of(&id)
                .ok_or_else(|| parse_err(name, line, format!("unknown site `{v}`")))
        };
        let (a, b) = (site(f[0])?, site(f[1])?);
        if a == b {
            return Err(parse_err(name, line, format!("link from `{}` to itself", f[0])));
        }
        let metrics = LinkMetrics {
            rtt_ms: number(name, line, "rtt_ms", f[2])?,
            loss: f
                .get(3)
                .map(|v| number(name, line, "loss_pct", v))
                .transpose()?
                .unwrap_or(0.0)
                / 100.0,
            jitter_ms: f
                .get(4)
                .map(|v| number(name, line, "jitter_ms", v))
                .transpose()?
                .unwrap_or(0.0),
            loss_se: 0.0,
        };
        metrics
            .validate()
            .map_err(|e| parse_err(name, line, e.to_string()))?;
        let cell = &mut given[usize::from(a) * n + usize::from(b)];
        if cell.is_some() {
            return Err(parse_err(
                name,
                line,
                format!("duplicate link {} -> {}", f[0], f[1]),
            ));
        }
        *cell = Some(metrics);
    }
    let mut out = Vec::new();
    for a in 0..n {
        for b in 0..n {
            let m = given[a * n + b].or(given[b * n + a]);
            if let Some(metrics) = m {
                out.push(MeasuredLink {
                    from: a as SiteIdx,
                    to: b as SiteIdx,
                    metrics,
                });
            }
        }
    }
    Ok(out)
}

/// A world from the two CSV texts, every measured link up.
pub fn world_from_csv(
    sites_name: &str,
    sites: &str,
    rtt_name: &str,
    rtt: &str,
) -> Result<World, TopologyError> {
    let inv = Inventory::new(parse_sites(sites_name, sites)?)?;
    let links = parse_rtt(rtt_name, rtt, &inv)?;
    let mut world = World::new(inv);
    let table = std::sync::Arc::make_mut(&mut world.links);
    for l in links {
        table.set(
            l.from,
            l.to,
            Some(crate::link::LinkView {
                metrics: l.metrics,
                health: LinkHealth::Up,
            }),
        );
    }
    Ok(world)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITES: &str = "id,region,provider,lat,lon\na,r1,aws,0,0\nb,r1,gcp,1,1\nc,r2,aws,2,2\n";

    #[test]
    fn reads_sites_and_mirrors_missing_reverse_links() {
        let w = world_from_csv(
            "s",
            SITES,
            "r",
            "src,dst,rtt_ms,loss_pct,jitter_ms\na,b,10,1,2\nb,a,12\n",
        )
        .unwrap();
        assert_eq!(w.inventory.len(), 3);
        let ab = w.links.get(0, 1).unwrap().metrics;
        assert_eq!((ab.rtt_ms, ab.loss, ab.jitter_ms), (10.0, 0.01, 2.0));
        assert_eq!(w.links.get(1, 0).unwrap().metrics.rtt_ms, 12.0);
        assert!(w.links.get(0, 2).is_none() && w.links.get(2, 0).is_none());
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let inv = Inventory::new(parse_sites("s", SITES).unwrap()).unwrap();
        let err = parse_rtt("rtt.csv", "src,dst,rtt_ms\na,b,10\na,zz,5\n", &inv).unwrap_err();
        assert_eq!(err.to_string(), "rtt.csv:3: unknown site `zz`");
        let err = parse_rtt("rtt.csv", "src,dst,rtt_ms\na,b,ten\n", &inv).unwrap_err();
        assert_eq!(err.to_string(), "rtt.csv:2: rtt_ms `ten` is not a number");
        let err = parse_rtt("rtt.csv", "src,dst,rtt_ms\na,b,-3\n", &inv).unwrap_err();
        assert!(err.to_string().starts_with("rtt.csv:2: invalid rtt_ms"), "{err}");
        let err = parse_sites("sites.csv", "id,region,provider,lat,lon\na,r,p,95,0\n").unwrap_err();
        assert!(err.to_string().starts_with("sites.csv:2: invalid lat"), "{err}");
        assert!(parse_sites("sites.csv", "name,lat\n").is_err());
    }
}
