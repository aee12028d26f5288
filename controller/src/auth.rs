//! Who may call the controller, and for what (see `proto::auth` for how certificates name
//! roles and sites).
//!
//! With `tls` configured, every connection is TLS and a client certificate, when presented, is
//! verified against the mesh CA in the handshake. Then:
//! - `ProbeIngest.Report` needs the prober role, and the stream's site must be one the
//!   certificate names (a prober cannot report for another site);
//! - `RouteDistribution.Watch` needs the agent role, with the same site rule;
//! - `Admin` needs the operator role, from a certificate or a bearer token
//!   (`authorization: Bearer …`) whose SHA-256 is configured.
//!
//! Without `tls` (development, the lab, tests) nothing is authenticated except that the admin
//! API still requires a token when tokens are configured; the controller says so loudly at
//! start.
//!
//! Refusals are gRPC statuses: UNAUTHENTICATED when the caller proved nothing, PERMISSION_DENIED
//! when it proved an identity without the right (`axonctl` exits 77 on both).

use proto::auth::{Peer, Role};
use serde::{Deserialize, Serialize};
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::error::ControllerError;

/// An operator token the admin API accepts. Only its SHA-256 is configured, so the config file
/// does not hold a usable secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorToken {
    /// Who holds it (recorded as the author of its drains).
    pub name: String,
    /// Hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
}

/// Who is calling, as far as the controller can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// TLS is off and no token was required: nothing is known.
    Anonymous,
    /// A verified client certificate.
    Cert(Peer),
    /// A configured operator token, by its name.
    Token(String),
}

impl Caller {
    /// A name for logs and for the author of a drain.
    pub fn principal(&self) -> Option<String> {
        match self {
            Caller::Anonymous => None,
            Caller::Cert(p) => Some(p.principal()),
            Caller::Token(name) => Some(format!("token:{name}")),
        }
    }

    /// Whether this caller may speak for `site` (a prober's reports, an agent's watch).
    ///
    /// # Errors
    /// PERMISSION_DENIED when a certificate does not name the site.
    pub fn may_speak_for(&self, site: &str) -> Result<(), Status> {
        match self {
            Caller::Cert(p) if !p.names(site) => Err(Status::permission_denied(format!(
                "this certificate ({}) does not name site `{site}`",
                p.principal()
            ))),
            _ => Ok(()),
        }
    }
}

/// The controller's authentication settings.
#[derive(Debug, Clone)]
pub struct Auth {
    tls: bool,
    tokens: Vec<(String, [u8; 32])>,
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Compares without an early exit, so timing says nothing about how much of a guess was right.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Builds the settings: `tls` when the server speaks TLS, and the configured tokens.
    ///
    /// # Errors
    /// A token whose `sha256` is not 64 hex digits, or an empty token name.
    pub fn new(tls: bool, tokens: &[OperatorToken]) -> Result<Self, ControllerError> {
        let tokens = tokens
            .iter()
            .map(|t| {
                if t.name.trim().is_empty() {
                    return Err(ControllerError::Config(
                        "operator_tokens: a token needs a name".into(),
                    ));
                }
                parse_hex32(&t.sha256)
                    .map(|h| (t.name.clone(), h))
                    .ok_or_else(|| {
                        ControllerError::Config(format!(
                            "operator_tokens `{}`: sha256 must be 64 hex digits",
                            t.name
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Auth { tls, tokens })
    }

    /// Whether anything is checked at all.
    pub fn is_open(&self) -> bool {
        !self.tls && self.tokens.is_empty()
    }

    fn token(&self, metadata: &MetadataMap) -> Option<Result<String, Status>> {
        let value = metadata.get("authorization")?;
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(presented) = presented else {
            return Some(Err(Status::unauthenticated(
                "authorization must be `Bearer <token>`",
            )));
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        // Every configured token is compared, so the time taken does not say which matched.
        let found = self.tokens.iter().fold(
            None,
            |found, (name, h)| if same(h, &hash) { Some(name.clone()) } else { found },
        );
        Some(found.ok_or_else(|| Status::unauthenticated("unknown token")))
    }

    /// Identifies the caller of a request and checks it holds `role`.
    ///
    /// # Errors
    /// UNAUTHENTICATED or PERMISSION_DENIED (see the module documentation).
    pub fn require(
        &self,
        extensions: &tonic::Extensions,
        metadata: &MetadataMap,
        role: Role,
    ) -> Result<Caller, Status> {
        let cert = extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .and_then(|chain| chain.first().and_then(|c| Peer::from_cert(c)));
        if let Some(peer) = cert {
            if peer.has(role) {
                return Ok(Caller::Cert(peer));
            }
            // An operator may also hold a token while presenting another certificate.
            if role == Role::Operator
                && let Some(Ok(name)) = self.token(metadata)
            {
                return Ok(Caller::Token(name));
            }
            return Err(Status::permission_denied(format!(
                "this certificate ({}) does not carry the {role} role",
                peer.principal()
            )));
        }
        if role == Role::Operator && !self.tokens.is_empty() {
            return match self.token(metadata) {
                Some(r) => r.map(Caller::Token),
                None => Err(Status::unauthenticated(
                    "the admin API needs an operator certificate or token",
                )),
            };
        }
        if self.tls {
            return Err(Status::unauthenticated(format!(
                "a client certificate with the {role} role is required"
            )));
        }
        Ok(Caller::Anonymous)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn token(name: &str, secret: &str) -> OperatorToken {
        let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        OperatorToken {
            name: name.into(),
            sha256: d.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    fn bearer(secret: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", format!("Bearer {secret}").parse().unwrap());
        m
    }

    #[test]
    fn without_tls_or_tokens_everything_is_open() {
        let a = Auth::new(false, &[]).unwrap();
        assert!(a.is_open());
        let ext = tonic::Extensions::new();
        for role in Role::ALL {
            assert_eq!(
                a.require(&ext, &MetadataMap::new(), role).unwrap(),
                Caller::Anonymous
            );
        }
    }

    #[test]
    fn tokens_guard_the_admin_api_and_only_it() {
        let a = Auth::new(false, &[token("ci", "s3cret"), token("bob", "other")]).unwrap();
        let ext = tonic::Extensions::new();
        assert_eq!(
            a.require(&ext, &bearer("s3cret"), Role::Operator).unwrap(),
            Caller::Token("ci".into())
        );
        assert_eq!(
            a.require(&ext, &bearer("other"), Role::Operator)
                .unwrap()
                .principal(),
            Some("token:bob".into())
        );
        let wrong = a.require(&ext, &bearer("guess"), Role::Operator).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let none = a.require(&ext, &MetadataMap::new(), Role::Operator).unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        let mut basic = MetadataMap::new();
        basic.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(
            a.require(&ext, &basic, Role::Operator).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        // Probers and agents are not asked for tokens.
        assert_eq!(
            a.require(&ext, &MetadataMap::new(), Role::Agent).unwrap(),
            Caller::Anonymous
        );
    }

    #[test]
    fn with_tls_a_missing_certificate_is_unauthenticated() {
        let a = Auth::new(true, &[]).unwrap();
        let e = a
            .require(&tonic::Extensions::new(), &MetadataMap::new(), Role::Prober)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn bad_token_config_is_refused() {
        let bad = OperatorToken {
            name: "x".into(),
            sha256: "abc".into(),
        };
        assert!(Auth::new(true, &[bad]).is_err());
        let unnamed = OperatorToken {
            name: " ".into(),
            ..token("x", "y")
        };
        assert!(Auth::new(true, &[unnamed]).is_err());
    }

    #[test]
    fn a_certificate_speaks_only_for_the_sites_it_names() {
        let peer = Peer {
            names: vec!["a".into()],
            roles: vec![Role::Agent],
        };
        let c = Caller::Cert(peer);
        assert!(c.may_speak_for("a").is_ok());
        assert_eq!(
            c.may_speak_for("b").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(Caller::Anonymous.may_speak_for("b").is_ok());
    }
}
