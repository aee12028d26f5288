//! Mutual TLS for probe connections: every prober presents a certificate for its site id,
//! signed by the mesh CA, and accepts only peers that do the same.
//!
//! Certificates are read from PEM files named in the config. The site id is the certificate's
//! DNS subject alternative name, so a probe datagram's sender site can be checked against the
//! identity the handshake proved.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use proto::auth::Role;

use crate::error::ProberError;

/// ALPN of the probe protocol: a peer speaking anything else is refused in the handshake.
pub const ALPN: &[u8] = b"axon-probe/1";

/// Where the PEM files are: the same files serve the probe connections and, when the
/// controller's URL is `https://`, the report stream (see `proto::auth`).
pub use proto::auth::TlsFiles;

/// Loaded certificates and the rustls configurations built from them.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// Server side (reflector), requiring client certificates.
    pub server: Arc<rustls::ServerConfig>,
    /// Client side (prober dialling peers), presenting its certificate.
    pub client: Arc<rustls::ClientConfig>,
}

fn read(path: &Path) -> Result<Vec<u8>, ProberError> {
    std::fs::read(path).map_err(|e| ProberError::Tls(format!("{}: {e}", path.display())))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ProberError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| ProberError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ProberError::Tls(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, ProberError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| ProberError::Tls(format!("{}: {e}", path.display())))?
        .ok_or_else(|| ProberError::Tls(format!("{}: no private key found", path.display())))
}

impl TlsMaterial {
    /// Loads the files and builds both sides (TLS 1.3 only, ring provider).
    pub fn load(files: &TlsFiles) -> Result<Self, ProberError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = |e: rustls::Error| ProberError::Tls(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(&files.ca)? {
            roots.add(ca).map_err(tls)?;
        }
        let roots = Arc::new(roots);
        let chain = certs(&files.cert)?;
        let key = key(&files.key)?;

        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| ProberError::Tls(e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(tls)?;
        server.alpn_protocols = vec![ALPN.to_vec()];

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(tls)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        Ok(TlsMaterial {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// Whether the peer's verified end-entity certificate names `site`.
pub fn cert_names_site(cert: &CertificateDer<'_>, site: &str) -> bool {
    let Ok(name) = ServerName::try_from(site) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert).is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
}

/// The end-entity certificate a QUIC connection's peer presented (verified in the handshake).
pub fn peer_cert(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().cloned()
}

/// A development CA for a whole mesh, written as PEM files into `dir`: what the lab and the
/// tests run on (production meshes bring certificates from their own CA).
/// - `ca.pem` (and `ca.key`, to [`issue`] more later);
/// - `<site>.pem`/`.key` for every site, naming the site with the prober and agent roles (one
///   certificate for both daemons of a site keeps the lab simple);
/// - `controller.pem`/`.key` (`controller.axon`), and `operator.pem`/`.key` for an operator
///   named `operator`.
pub fn generate_mesh(dir: &Path, sites: &[&str]) -> Result<(), ProberError> {
    let ca = write_ca(dir, CA_DAYS)?;
    let roles = [Role::Prober.cert_name(), Role::Agent.cert_name()];
    let until = valid_until(CERT_DAYS);
    for site in sites {
        write_leaf(dir, &ca, site, &[site, roles[0], roles[1]], until)?;
    }
    write_leaf(dir, &ca, "controller", &[Role::Controller.cert_name()], until)?;
    write_leaf(
        dir,
        &ca,
        "operator",
        &["operator", Role::Operator.cert_name()],
        until,
    )?;
    Ok(())
}

/// How long a CA made by [`new_ca`] is valid by default, days (ten years: replacing it means
/// re-issuing every certificate of the mesh).
pub const CA_DAYS: u32 = 3_650;

/// How long a certificate made by [`issue`] is valid by default, days: a year, renewed in
/// place before it ends (the daemons load renewed files by themselves; see
/// `TlsFiles::recheck_s`).
pub const CERT_DAYS: u32 = 365;

/// Certificates are valid from an hour ago, so a peer whose clock is a little behind still
/// accepts one issued just now.
const BACKDATE: time::Duration = time::Duration::hours(1);

fn valid_until(days: u32) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(i64::from(days))
}

/// Creates a mesh CA in `dir` valid for `days` (`ca.pem`, and `ca.key` to [`issue`]
/// certificates from), refusing to replace one: every certificate of a mesh must come from
/// the same CA, and a new one would orphan them all. What `axonctl cert init` runs; keep
/// `ca.key` offline. Returns when it expires, Unix seconds.
pub fn new_ca(dir: &Path, days: u32) -> Result<i64, ProberError> {
    if dir.join("ca.key").exists() || dir.join("ca.pem").exists() {
        return Err(ProberError::Tls(format!(
            "{} already holds a CA (ca.pem, ca.key): not replaced",
            dir.display()
        )));
    }
    write_ca(dir, days)?;
    Ok(valid_until(days).unix_timestamp())
}

fn write_ca(dir: &Path, days: u32) -> Result<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, ProberError> {
    let err = |e: rcgen::Error| ProberError::Tls(e.to_string());
    let io = |e: std::io::Error| ProberError::io(format!("writing certificates to {}", dir.display()), e);
    std::fs::create_dir_all(dir).map_err(io)?;
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let ca_key_pem = ca_key.serialize_pem();
    let mut params = ca_params()?;
    params.not_before = time::OffsetDateTime::now_utc() - BACKDATE;
    params.not_after = valid_until(days);
    let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).map_err(err)?;
    std::fs::write(dir.join("ca.pem"), ca.pem()).map_err(io)?;
    ops::write_atomically(&dir.join("ca.key"), ca_key_pem.as_bytes()).map_err(io)?;
    Ok(ca)
}

/// Issues one more certificate from the development CA in `dir` (see [`generate_mesh`]):
/// `<stem>.pem` and `<stem>.key`, with these DNS names, valid for `days` but never past the
/// CA's own end. Returns its files and when it expires, Unix seconds.
pub fn issue(dir: &Path, stem: &str, names: &[&str], days: u32) -> Result<(TlsFiles, i64), ProberError> {
    let err = |e: rcgen::Error| ProberError::Tls(e.to_string());
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).map_err(|e| ProberError::io(format!("reading {f}"), e))
    };
    // The same subject and key as the CA certificate: what a chain is checked against.
    let key = rcgen::KeyPair::from_pem(&read("ca.key")?).map_err(err)?;
    let ca = rcgen::Issuer::new(ca_params()?, key);
    let files = mesh_files(dir, stem);
    let ca_end = proto::auth::earliest_expiry(&files.ca).map_err(ProberError::Tls)?;
    let until = valid_until(days)
        .min(time::OffsetDateTime::from_unix_timestamp(ca_end).map_err(|e| ProberError::Tls(e.to_string()))?);
    write_leaf(dir, &ca, stem, names, until)?;
    Ok((files, until.unix_timestamp()))
}

/// The development CA's certificate parameters (fixed, so the CA can be rebuilt from its key).
fn ca_params() -> Result<rcgen::CertificateParams, ProberError> {
    let mut p =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| ProberError::Tls(e.to_string()))?;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "axon mesh CA");
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn write_leaf(
    dir: &Path,
    ca: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
    stem: &str,
    names: &[&str],
    until: time::OffsetDateTime,
) -> Result<(), ProberError> {
    let err = |e: rcgen::Error| ProberError::Tls(e.to_string());
    let io = |e: std::io::Error| ProberError::io(format!("writing certificates to {}", dir.display()), e);
    let sans: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
    let mut params = rcgen::CertificateParams::new(sans).map_err(err)?;
    params.not_before = time::OffsetDateTime::now_utc() - BACKDATE;
    params.not_after = until;
    params.distinguished_name.push(rcgen::DnType::CommonName, stem);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, ca).map_err(err)?;
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).map_err(io)?;
    ops::write_atomically(&dir.join(format!("{stem}.key")), key.serialize_pem().as_bytes()).map_err(io)?;
    Ok(())
}

/// The file names [`generate_mesh`] wrote for `site`.
pub fn mesh_files(dir: &Path, site: &str) -> TlsFiles {
    TlsFiles::new(
        dir.join("ca.pem"),
        dir.join(format!("{site}.pem")),
        dir.join(format!("{site}.key")),
    )
}
