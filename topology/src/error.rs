//! The one error type of the routing engine.
//!
//! Every variant names what was wrong and with what value, so that a daemon can turn it into a
//! one-line operator message and a counter label without parsing text.

use crate::drain::Guardrail;
use crate::site::{RegionId, SiteId};

/// Everything the routing engine can refuse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TopologyError {
    /// A site id that the inventory does not hold.
    #[error("unknown site `{0}`")]
    UnknownSite(SiteId),
    /// A region that holds no site of the inventory.
    #[error("unknown region `{0}`")]
    UnknownRegion(RegionId),
    /// The inventory names the same site twice.
    #[error("site `{0}` is listed twice")]
    DuplicateSite(SiteId),
    /// An identifier with characters or a length we do not accept.
    #[error("invalid identifier `{value}`: {detail}")]
    InvalidId {
        /// The identifier as given.
        value: String,
        /// Why it was refused.
        detail: &'static str,
    },
    /// A number outside its range (NaN, negative, absurd).
    #[error("invalid {field}: {detail}")]
    InvalidValue {
        /// The field that carried the value.
        field: &'static str,
        /// The value and the allowed range.
        detail: String,
    },
    /// A drain refused by one of the guardrails; `detail` explains it to the operator.
    #[error("refused by guardrail `{rule}`: {detail}")]
    GuardrailRefused {
        /// Which guardrail refused.
        rule: Guardrail,
        /// A sentence saying why and what to do.
        detail: String,
    },
    /// An undrain of something that is not drained.
    #[error("`{0}` is not drained")]
    NotDrained(String),
    /// A drain of something already drained.
    #[error("`{0}` is already drained")]
    AlreadyDrained(String),
    /// Promotion of a site that is not a shadow site.
    #[error("site `{0}` is not a shadow site")]
    NotShadow(SiteId),
    /// A malformed line of a CSV or similar input.
    #[error("{source_name}:{line}: {detail}")]
    Parse {
        /// The file or input name.
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        detail: String,
    },
    /// The dense engine indexes sites with 16 bits.
    #[error("too many sites: {0} (at most 65,534)")]
    TooManySites(usize),
}
