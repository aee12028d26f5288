//! Sites, regions and the inventory: who is in the mesh and where.
//!
//! The inventory fixes a dense index for every site (its position in the list). Every matrix
//! of the engine is indexed by it, so lookups on the hot path are array reads, never hashing.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::TopologyError;

const MAX_ID_LEN: usize = 64;

fn check_id(value: &str) -> Result<(), TopologyError> {
    let refuse = |detail| {
        Err(TopologyError::InvalidId {
            value: value.chars().take(MAX_ID_LEN + 8).collect(),
            detail,
        })
    };
    if value.is_empty() {
        return refuse("empty");
    }
    if value.len() > MAX_ID_LEN {
        return refuse("longer than 64 bytes");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return refuse("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks the identifier (1–64 bytes of `[A-Za-z0-9._-]`) and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, TopologyError> {
                let value = value.into();
                check_id(&value)?;
                Ok(Self(value))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = TopologyError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = TopologyError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
    };
}

id_type!(
    /// A data center's identifier (`aws-use1`, `metal-sin1`): the unit of routing.
    SiteId
);
id_type!(
    /// A geographic region (`us-east`, `sa-east`) holding one or more sites, often of several
    /// providers; the unit of region drains and of the last-site guardrail.
    RegionId
);

/// Whether a site carries traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// In service: an endpoint of routes and a possible relay.
    #[default]
    Active,
    /// Measured but never routed to or through: how a new data center is tried before it joins.
    Shadow,
}

/// One data center of the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Site {
    /// Unique id.
    pub id: SiteId,
    /// The region it belongs to.
    pub region: RegionId,
    /// Cloud provider or `metal`; used for egress prices.
    pub provider: String,
    /// Latitude in degrees, −90..=90.
    pub lat: f64,
    /// Longitude in degrees, −180..=180.
    pub lon: f64,
    /// Concurrent sessions the site can carry; used by the capacity guardrail and what-if.
    pub capacity: u32,
    /// Active or shadow.
    pub role: Role,
}

impl Site {
    /// Builds an active site, checking ids and coordinates.
    pub fn new(
        id: &str,
        region: &str,
        provider: &str,
        lat: f64,
        lon: f64,
        capacity: u32,
    ) -> Result<Self, TopologyError> {
        let site = Site {
            id: SiteId::new(id)?,
            region: RegionId::new(region)?,
            provider: provider.to_owned(),
            lat,
            lon,
            capacity,
            role: Role::Active,
        };
        site.validate()?;
        Ok(site)
    }

    /// Checks coordinates; ids are checked by their types.
    pub fn validate(&self) -> Result<(), TopologyError> {
        if !(-90.0..=90.0).contains(&self.lat) {
            return Err(TopologyError::InvalidValue {
                field: "lat",
                detail: format!("{} for site {} (must be -90..=90)", self.lat, self.id),
            });
        }
        if !(-180.0..=180.0).contains(&self.lon) {
            return Err(TopologyError::InvalidValue {
                field: "lon",
                detail: format!("{} for site {} (must be -180..=180)", self.lon, self.id),
            });
        }
        Ok(())
    }

    /// Great-circle distance to another site in kilometres (haversine).
    pub fn distance_km(&self, other: &Site) -> f64 {
        great_circle_km(self.lat, self.lon, other.lat, other.lon)
    }
}

/// Great-circle distance between two points in kilometres (haversine, mean Earth radius).
pub fn great_circle_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// The dense index of a site in its inventory.
pub type SiteIdx = u16;

/// The sites of the mesh in a fixed order; a site's position is its dense index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    sites: Vec<Site>,
    index: HashMap<SiteId, SiteIdx>,
}

impl Inventory {
    /// Builds the inventory, refusing duplicates, bad coordinates and more than 65,534 sites.
    pub fn new(sites: Vec<Site>) -> Result<Self, TopologyError> {
        if sites.len() >= usize::from(u16::MAX) {
            return Err(TopologyError::TooManySites(sites.len()));
        }
        let mut index = HashMap::with_capacity(sites.len());
        for (i, site) in sites.iter().enumerate() {
            site.validate()?;
            let i = SiteIdx::try_from(i).map_err(|_| TopologyError::TooManySites(sites.len()))?;
            if index.insert(site.id.clone(), i).is_some() {
                return Err(TopologyError::DuplicateSite(site.id.clone()));
            }
        }
        Ok(Inventory { sites, index })
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.sites.len()
    }

    /// True when there is no site.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// All sites in index order.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// The site at a dense index.
    pub fn site(&self, idx: SiteIdx) -> &Site {
        &self.sites[usize::from(idx)]
    }

    /// The dense index of a site id.
    pub fn index_of(&self, id: &SiteId) -> Option<SiteIdx> {
        self.index.get(id).copied()
    }

    /// The dense index of a site id, or `UnknownSite`.
    pub fn require(&self, id: &SiteId) -> Result<SiteIdx, TopologyError> {
        self.index_of(id)
            .ok_or_else(|| TopologyError::UnknownSite(id.clone()))
    }

    /// The site with this id.
    pub fn get(&self, id: &SiteId) -> Option<&Site> {
        self.index_of(id).map(|i| self.site(i))
    }

    /// True when some site belongs to the region.
    pub fn has_region(&self, region: &RegionId) -> bool {
        self.sites.iter().any(|s| &s.region == region)
    }

    /// Appends a site; used by what-if. Its index is the old length.
    pub fn push(&mut self, site: Site) -> Result<SiteIdx, TopologyError> {
        site.validate()?;
        if self.index.contains_key(&site.id) {
            return Err(TopologyError::DuplicateSite(site.id));
        }
        let idx = SiteIdx::try_from(self.sites.len())
            .ok()
            .filter(|&i| i < u16::MAX)
            .ok_or(TopologyError::TooManySites(self.sites.len() + 1))?;
        self.index.insert(site.id.clone(), idx);
        self.sites.push(site);
        Ok(idx)
    }

    /// Changes a site's role in place; used by what-if to promote a shadow site.
    pub fn set_role(&mut self, idx: SiteIdx, role: Role) {
        self.sites[usize::from(idx)].role = role;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_empty_long_and_odd_characters() {
        assert!(SiteId::new("aws-use1").is_ok());
        assert!(SiteId::new("").is_err());
        assert!(SiteId::new("a b").is_err());
        assert!(SiteId::new("x".repeat(65)).is_err());
    }

    #[test]
    fn inventory_refuses_duplicates_and_bad_coordinates() {
        let a = Site::new("a", "r", "aws", 0.0, 0.0, 10).unwrap();
        assert_eq!(
            Inventory::new(vec![a.clone(), a.clone()]),
            Err(TopologyError::DuplicateSite(a.id.clone()))
        );
        assert!(Site::new("b", "r", "aws", 91.0, 0.0, 1).is_err());
        assert!(Site::new("b", "r", "aws", 0.0, f64::NAN, 1).is_err());
    }

    #[test]
    fn great_circle_matches_a_known_distance() {
        // New York to London is about 5,570 km.
        let d = great_circle_km(40.71, -74.01, 51.51, -0.13);
        assert!((d - 5570.0).abs() < 30.0, "{d}");
    }
}
