//! Who may call what on the control plane: the TLS files every process names in its config,
//! the names a certificate carries, and the roles those names grant.
//!
//! Identity is the certificate's DNS subject alternative names, verified against the mesh CA
//! in the TLS handshake:
//! - a **role** is a reserved name: `prober.axon`, `agent.axon`, `operator.axon`,
//!   `controller.axon` (site ids may not end in `.axon`, so no site can pose as a role);
//! - every other name is the holder's own: a site id for probers and agents (the controller
//!   checks that a stream speaks for a site its certificate names), a person or a system for
//!   operators (recorded as the author of their drains).
//!
//! Clients check the controller's certificate against [`CONTROLLER_NAME`], whatever address
//! they dial, so controllers can move without new certificates.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The name every controller's certificate carries and every client verifies.
pub const CONTROLLER_NAME: &str = "controller.axon";

/// The suffix of reserved names; site ids may not end in it.
pub const RESERVED_SUFFIX: &str = ".axon";

/// What a certificate allows its holder to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends probe reports for the sites its certificate names.
    Prober,
    /// Watches routes for the sites its certificate names.
    Agent,
    /// Uses the admin API: reads, drains, undrains.
    Operator,
    /// Serves the control plane.
    Controller,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Prober, Role::Agent, Role::Operator, Role::Controller];

    /// The certificate name that grants the role.
    pub fn cert_name(self) -> &'static str {
        match self {
            Role::Prober => "prober.axon",
            Role::Agent => "agent.axon",
            Role::Operator => "operator.axon",
            Role::Controller => CONTROLLER_NAME,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Prober => "prober",
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Controller => "controller",
        })
    }
}

/// The identity a verified certificate proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its own names (sites, or a person's or system's name), role names excluded.
    pub names: Vec<String>,
    /// The roles it holds.
    pub roles: Vec<Role>,
}

impl Peer {
    /// Reads the names of an end-entity certificate (DER) already verified by the TLS stack.
    /// `None` when it does not parse.
    pub fn from_cert(der: &[u8]) -> Option<Peer> {
        let der = rustls_pki_types::CertificateDer::from(der);
        let cert = webpki::EndEntityCert::try_from(&der).ok()?;
        let (mut names, mut roles) = (Vec::new(), Vec::new());
        for name in cert.valid_dns_names() {
            match Role::ALL.into_iter().find(|r| r.cert_name() == name) {
                Some(r) => roles.push(r),
                None if !name.ends_with(RESERVED_SUFFIX) => names.push(name.to_string()),
                None => {}
            }
        }
        Some(Peer { names, roles })
    }

    /// Whether the certificate grants `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether the certificate names `name` (a site, for probers and agents).
    pub fn names(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// A name for logs and audit: its first own name, else its first role.
    pub fn principal(&self) -> String {
        self.names
            .first()
            .cloned()
            .or_else(|| self.roles.first().map(ToString::to_string))
            .unwrap_or_else(|| "unnamed".into())
    }
}

/// Where a process's PEM files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The mesh CA certificate(s): peers are verified against them.
    pub ca: PathBuf,
    /// This process's certificate chain (its names: see the module documentation).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the files are read again to see whether they were replaced, s. New
    /// contents, once they have stayed the same for one more check (a rotation caught half
    /// way, a new certificate beside the old key, is not loaded), are loaded as `SIGHUP` would
    /// load them: a certificate renewed in place, or a Kubernetes secret updated, needs no
    /// signal. The check also refreshes `axon_tls_certificate_expiry_timestamp_seconds`. 0
    /// reads them only on `SIGHUP`. Default 60.
    #[serde(default = "default_recheck_s")]
    pub recheck_s: u64,
}

fn default_recheck_s() -> u64 {
    60
}

/// When the certificates in a process's files stop being valid: the earliest `notAfter` of
/// each file, Unix seconds. A certificate that expires ends every new handshake, so this is
/// what an operator is warned about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsExpiry {
    /// This process's certificate chain.
    pub cert: i64,
    /// The CA certificates it trusts.
    pub ca: i64,
}

/// The PEM contents of [`TlsFiles`].
struct Pems {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

impl TlsFiles {
    /// Files at these paths, read again every minute.
    pub fn new(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsFiles {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            recheck_s: default_recheck_s(),
        }
    }

    fn pems(&self) -> Result<Pems, String> {
        Ok(Pems {
            ca: read(&self.ca)?,
            cert: read(&self.cert)?,
            key: read(&self.key)?,
        })
    }

    /// When the certificates in the files expire (see [`TlsExpiry`]).
    ///
    /// # Errors
    /// A file that cannot be read, or holds no certificate that parses.
    pub fn expiry(&self) -> Result<TlsExpiry, String> {
        Ok(TlsExpiry {
            cert: earliest_expiry(&self.cert)?,
            ca: earliest_expiry(&self.ca)?,
        })
    }

    /// The server side, as a rustls configuration for a server that makes its own TLS
    /// acceptor (the controller, which swaps it when its files are rotated): this certificate,
    /// and client certificates verified against the CA. A client certificate is optional in
    /// the handshake (an operator may use a token instead); the services decide what an
    /// unauthenticated caller may do. HTTP/2 by ALPN.
    ///
    /// # Errors
    /// A file that cannot be read or holds no usable certificate or key.
    pub fn server(&self) -> Result<rustls::ServerConfig, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let p = self.pems()?;
        let certs = |pem: &[u8], path: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no certificate found", path.display()));
            }
            Ok(certs)
        };
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(&p.ca, &self.ca)? {
            roots.add(ca).map_err(|e| format!("{}: {e}", self.ca.display()))?;
        }
        let chain = certs(&p.cert, &self.cert)?;
        let key =
            PrivateKeyDer::from_pem_slice(&p.key).map_err(|e| format!("{}: {e}", self.key.display()))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("{}: {e}", self.ca.display()))?;
        let mut cfg = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| format!("{}: {e}", self.cert.display()))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }

    /// The client side: this certificate, and the controller verified against the CA under
    /// [`CONTROLLER_NAME`].
    ///
    /// # Errors
    /// A file that cannot be read.
    pub fn client(&self) -> Result<ClientTlsConfig, String> {
        let p = self.pems()?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(p.ca))
            .identity(Identity::from_pem(p.cert, p.key))
            .domain_name(CONTROLLER_NAME))
    }
}

/// The earliest `notAfter` of the certificates in a PEM file, Unix seconds: when the file
/// stops being of use.
///
/// # Errors
/// A file that cannot be read, or holds no certificate that parses.
pub fn earliest_expiry(path: &Path) -> Result<i64, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = read(path)?;
    let mut earliest: Option<i64> = None;
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| format!("{}: {e}", path.display()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("{}: not an X.509 certificate: {e}", path.display()))?;
        let t = cert.validity().not_after.timestamp();
        earliest = Some(earliest.map_or(t, |e| e.min(t)));
    }
    earliest.ok_or_else(|| format!("{}: no certificate found", path.display()))
}

/// Tells when a process's TLS files were replaced, from their contents read at every check
/// ([`TlsFiles::recheck_s`]): what lets a daemon pick up a rotation without a signal.
#[derive(Debug)]
pub struct TlsWatch {
    files: TlsFiles,
    watch: FileWatch,
}

impl TlsWatch {
    /// Watches `files`, whose present contents count as loaded.
    pub fn new(files: TlsFiles) -> Self {
        let watch = FileWatch::new(vec![files.ca.clone(), files.cert.clone(), files.key.clone()]);
        TlsWatch { files, watch }
    }

    /// The files watched.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// See [`FileWatch::check`].
    pub fn check(&mut self) -> bool {
        self.watch.check()
    }
}

/// Tells when a set of files (a certificate, its key, a CA, a password) was replaced, from
/// their contents read at every check, so that what reads them can read them again without a
/// signal. Replaced files are reported once they have stayed the same for one more check: a
/// rotation caught half way (a new certificate beside the old key) is not reported.
#[derive(Debug)]
pub struct FileWatch {
    paths: Vec<PathBuf>,
    /// The contents last loaded (or found not to load: they are not tried again).
    loaded: Option<Vec<u8>>,
    /// New contents seen at the last check, waiting for one more check to settle.
    seen: Option<Vec<u8>>,
}

impl FileWatch {
    /// Watches `paths`, whose present contents count as loaded.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let loaded = Self::contents(&paths);
        FileWatch {
            paths,
            loaded,
            seen: None,
        }
    }

    /// The files' contents, each prefixed with its length (none while one cannot be read: it
    /// is being replaced).
    fn contents(paths: &[PathBuf]) -> Option<Vec<u8>> {
        let mut all = Vec::new();
        for path in paths {
            let bytes = std::fs::read(path).ok()?;
            all.extend((bytes.len() as u64).to_le_bytes());
            all.extend(bytes);
        }
        Some(all)
    }

    /// Reads the files once. True when they differ from the contents last loaded and are the
    /// same as at the previous check: the caller should load them now. Contents that then
    /// fail to load are not tried again until they change.
    pub fn check(&mut self) -> bool {
        let Some(now) = Self::contents(&self.paths) else {
            self.seen = None;
            return false;
        };
        if self.loaded.as_ref() == Some(&now) {
            self.seen = None;
            return false;
        }
        if self.seen.as_ref() == Some(&now) {
            self.loaded = self.seen.take();
            return true;
        }
        self.seen = Some(now);
        false
    }
}

/// A client endpoint for `url`: with TLS when `tls` is given (the URL's scheme must then be
/// `https`), plaintext otherwise.
///
/// # Errors
/// A malformed URL, a scheme that does not match, or TLS files that cannot be read.
pub fn endpoint(url: &str, tls: Option<&TlsFiles>) -> Result<Endpoint, String> {
    let ep = Endpoint::from_shared(url.to_string()).map_err(|e| format!("{url}: {e}"))?;
    let https = url.starts_with("https://");
    match (tls, https) {
        (Some(files), true) => ep.tls_config(files.client()?).map_err(|e| format!("{url}: {e}")),
        (None, false) => Ok(ep),
        (Some(_), false) => Err(format!(
            "{url}: TLS files are configured, so the URL must be https://"
        )),
        (None, true) => Err(format!("{url}: https:// needs TLS files (ca, cert, key)")),
    }
}

/// Installs ring as the process's TLS crypto provider (idempotent). rustls needs one chosen
/// before the first handshake; every Axon binary and test calls this first.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Another provider installed first (a host program's choice) is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cert(names: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn role_names_grant_roles_and_other_names_are_the_holder_s() {
        let p = Peer::from_cert(&cert(&["aws-use1", "prober.axon", "agent.axon"])).unwrap();
        assert!(p.has(Role::Prober) && p.has(Role::Agent) && !p.has(Role::Operator));
        assert!(p.names("aws-use1") && !p.names("gcp-euw3"));
        assert_eq!(p.principal(), "aws-use1");
    }

    #[test]
    fn reserved_names_that_grant_nothing_are_not_identities() {
        let p = Peer::from_cert(&cert(&["root.axon", "alice"])).unwrap();
        assert!(p.roles.is_empty());
        assert_eq!(p.names, vec!["alice".to_string()]);
        let op = Peer::from_cert(&cert(&["operator.axon"])).unwrap();
        assert_eq!(op.principal(), "operator");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(Peer::from_cert(b"not a certificate").is_none());
    }

    #[test]
    fn the_scheme_must_match_the_tls_setting() {
        let files = TlsFiles::new("/nonexistent/ca.pem", "/nonexistent/c.pem", "/nonexistent/c.key");
        assert!(endpoint("http://127.0.0.1:1", None).is_ok());
        assert!(
            endpoint("https://127.0.0.1:1", None)
                .unwrap_err()
                .contains("needs TLS files")
        );
        assert!(
            endpoint("http://127.0.0.1:1", Some(&files))
                .unwrap_err()
                .contains("https://")
        );
        assert!(
            endpoint("https://127.0.0.1:1", Some(&files))
                .unwrap_err()
                .contains("/nonexistent/ca.pem")
        );
    }

    /// A self-signed certificate valid until `y-m-d`, as PEM.
    fn pem_until(y: i32, m: u8, d: u8) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(y, m, d);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn expiry_is_the_earliest_end_in_each_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::new(
            dir.path().join("ca.pem"),
            dir.path().join("c.pem"),
            dir.path().join("c.key"),
        );
        // A chain whose intermediate ends first, and a bundle of two CAs.
        std::fs::write(&files.cert, pem_until(2031, 5, 17) + &pem_until(2030, 1, 2)).unwrap();
        std::fs::write(&files.ca, pem_until(2036, 1, 1) + &pem_until(2040, 1, 1)).unwrap();
        let e = files.expiry().unwrap();
        // 2030-01-02 and 2036-01-01, 00:00 UTC.
        assert_eq!((e.cert, e.ca), (1_893_542_400, 2_082_758_400));
        // No certificate, or not one, is a clear error naming the file.
        std::fs::write(&files.ca, "no pem here").unwrap();
        let err = files.expiry().unwrap_err();
        assert!(err.contains("ca.pem") && err.contains("no certificate"), "{err}");
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(&files.ca, garbage).unwrap();
        let err = files.expiry().unwrap_err();
        assert!(err.contains("ca.pem") && err.contains("not an X.509"), "{err}");
        std::fs::remove_file(&files.cert).unwrap();
        assert!(files.expiry().unwrap_err().contains("c.pem"));
    }

    #[test]
    fn a_replacement_is_loaded_once_it_has_settled_and_once_only() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::new(
            dir.path().join("ca.pem"),
            dir.path().join("c.pem"),
            dir.path().join("c.key"),
        );
        for (f, text) in [
            (&files.ca, "ca 1"),
            (&files.cert, "cert 1"),
            (&files.key, "key 1"),
        ] {
            std::fs::write(f, text).unwrap();
        }
        let mut w = TlsWatch::new(files.clone());
        assert!(!w.check(), "the files in force are not new");
        // Caught half way: a new certificate beside the old key. Not loaded while it changes.
        std::fs::write(&files.cert, "cert 2").unwrap();
        assert!(!w.check());
        std::fs::write(&files.key, "key 2").unwrap();
        assert!(!w.check(), "changed again since the last check");
        assert!(w.check(), "settled: load it");
        assert!(!w.check(), "loaded once");
        // A file missing for a moment (being replaced) is waited for.
        std::fs::remove_file(&files.ca).unwrap();
        assert!(!w.check());
        std::fs::write(&files.ca, "ca 1").unwrap();
        assert!(!w.check(), "back as it was: nothing to load");
        // Put back as loaded before the last load: that is a change too.
        std::fs::write(&files.cert, "cert 1").unwrap();
        std::fs::write(&files.key, "key 1").unwrap();
        assert!(!w.check());
        assert!(w.check());
    }
}
