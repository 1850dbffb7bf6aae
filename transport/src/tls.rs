//! Certificates and TLS settings of the QUIC transport.
//!
//! A cluster has one certificate authority. Every node holds a certificate
//! it signed that names the node's id, and so does every client; both sides
//! of every connection present theirs (mutual TLS), and a peer whose
//! certificate the CA did not sign is refused during the handshake, before
//! the transport reads a byte from it.
//!
//! # Identity
//!
//! Who a peer is comes from its certificate, never from anything it says:
//! a certificate carries exactly one subject alternative name URI
//! `flotilla://node/{id}` (a node) or `flotilla://client/{name}` (a
//! client), read by [`identity_of`]. The transport compares it with the
//! node it dialed, and with the `from` of every frame the peer sends.
//!
//! Node certificates also carry the DNS name `node-{id}.flotilla`
//! ([`node_server_name`]): nodes dial each other by that server name, so the
//! stock rustls name check already rejects a certificate issued for another
//! node. That check is a second line only — an operator may put any
//! name in a certificate's `hosts` — the binding check is the URI.
//!
//! # Files
//!
//! `init_ca` writes `ca.crt` and `ca.key`; `issue_node_cert` writes
//! `node-{id}.crt` and `node-{id}.key`; `issue_client_cert` writes
//! `client-{name}.crt` and `client-{name}.key`, all PEM, all in one
//! directory. Private keys are created with mode 0600. Validity follows
//! CockroachDB's defaults: ten years for the CA, five for node and client
//! certificates, starting a day in the past so that a certificate issued on
//! a machine whose clock runs ahead is valid on the others at once.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use time::{Duration as TimeDuration, OffsetDateTime};

use crate::NodeId;

/// The ALPN protocol both sides must offer: anything that is not a
/// flotilla peer fails the handshake instead of reaching the frame decoder.
pub const ALPN: &[u8] = b"flotilla/1";

const NODE_URI_PREFIX: &str = "flotilla://node/";
const CLIENT_URI_PREFIX: &str = "flotilla://client/";
const CA_COMMON_NAME: &str = "flotilla cluster CA";
const CA_VALIDITY_DAYS: i64 = 3650;
const CERT_VALIDITY_DAYS: i64 = 5 * 365;
/// Client names become file names and URI path segments.
const CLIENT_NAME_BYTES_MAX: usize = 64;

/// Who the holder of a certificate is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    Node(NodeId),
    Client(String),
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Client(name) => write!(f, "client {name:?}"),
        }
    }
}

/// The three files a node or a client needs for mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate: the only root trusted.
    pub ca_cert: PathBuf,
    /// This holder's certificate, signed by the CA.
    pub cert: PathBuf,
    /// This holder's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Where [`issue_node_cert`] puts node `id`'s files in `dir`.
    pub fn node(dir: &Path, id: NodeId) -> TlsFiles {
        TlsFiles {
            ca_cert: dir.join("ca.crt"),
            cert: dir.join(format!("node-{id}.crt")),
            key: dir.join(format!("node-{id}.key")),
        }
    }

    /// Where [`issue_client_cert`] puts client `name`'s files in `dir`.
    pub fn client(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca_cert: dir.join("ca.crt"),
            cert: dir.join(format!("client-{name}.crt")),
            key: dir.join(format!("client-{name}.key")),
        }
    }
}

/// What is wrong with a certificate, a key, or a file holding one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is missing: expected the {what} there", path.display())]
    Missing { path: PathBuf, what: &'static str },
    #[error(
        "{} already exists: refusing to overwrite the cluster CA, which signed every \
         certificate of the cluster (to start a new cluster, remove ca.crt and ca.key yourself)",
        path.display()
    )]
    CaExists { path: PathBuf },
    #[error("{} is not a PEM {what}: {reason}", path.display())]
    NotPem {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{origin} is not a valid X.509 certificate: {reason}")]
    BadCertificate { origin: String, reason: String },
    #[error("{} is not signed by the cluster CA {}: {reason}", cert.display(), ca.display())]
    NotSignedByCa {
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error(
        "{} is signed by the cluster CA {} but unusable: {reason}",
        cert.display(),
        ca.display()
    )]
    CertificateRejected {
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error(
        "{origin} carries no flotilla identity: expected one subject alternative name URI \
         {NODE_URI_PREFIX}<id> or {CLIENT_URI_PREFIX}<name>"
    )]
    NoIdentity { origin: String },
    #[error("{origin}: {reason}")]
    BadIdentity { origin: String, reason: String },
    #[error("{} is the certificate of {actual}, not of {expected}", cert.display())]
    WrongIdentity {
        cert: PathBuf,
        expected: Identity,
        actual: Identity,
    },
    #[error("the key {} does not belong to the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "invalid client name {name:?}: use 1 to {CLIENT_NAME_BYTES_MAX} letters, digits, \
         '.', '_' or '-', not starting with '.'"
    )]
    InvalidName { name: String },
    #[error("invalid certificate host {host:?}: {reason}")]
    InvalidHost { host: String, reason: String },
    #[error("generating a certificate: {0}")]
    Generate(String),
    #[error("building the TLS configuration: {0}")]
    Config(String),
}

/// The server name nodes dial node `id` by; every node certificate carries
/// it as a DNS name.
pub fn node_server_name(id: NodeId) -> String {
    format!("node-{id}.flotilla")
}

/// Creates the cluster CA in `dir` (created if missing): `ca.crt` and
/// `ca.key`. Refuses to replace an existing CA, since that would orphan
/// every certificate it signed.
pub fn init_ca(dir: &Path) -> Result<(), TlsError> {
    let cert_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(TlsError::CaExists { path: path.clone() });
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let key = KeyPair::generate().map_err(generate_error)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key).map_err(generate_error)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    if let Err(error) = write_new(&cert_path, cert.pem().as_bytes(), false) {
        // A key without its certificate would block the next `init_ca`.
        let _ = std::fs::remove_file(&key_path);
        return Err(error);
    }
    Ok(())
}

/// Issues node `id`'s certificate, signed by the CA in `dir`, valid for the
/// DNS names and IP addresses in `hosts` besides [`node_server_name`]`(id)`.
/// Replaces an earlier certificate of the same node (a renewal).
pub fn issue_node_cert(dir: &Path, id: NodeId, hosts: &[String]) -> Result<TlsFiles, TlsError> {
    let server_name = node_server_name(id);
    let mut names = vec![server_name.clone()];
    names.extend(hosts.iter().filter(|h| **h != server_name).cloned());
    let mut params = leaf_params(&names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("flotilla node {id}"));
    params
        .subject_alt_names
        .push(uri_san(&format!("{NODE_URI_PREFIX}{id}"))?);
    // A node both dials (client) and accepts (server).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let files = TlsFiles::node(dir, id);
    issue(dir, params, &files)?;
    Ok(files)
}

/// Issues client `name`'s certificate, signed by the CA in `dir`. A client
/// certificate only authenticates clients: nodes never accept Raft frames
/// from it. Replaces an earlier certificate of the same client.
pub fn issue_client_cert(dir: &Path, name: &str) -> Result<TlsFiles, TlsError> {
    check_client_name(name)?;
    let mut params = leaf_params(&[])?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("flotilla client {name}"));
    params
        .subject_alt_names
        .push(uri_san(&format!("{CLIENT_URI_PREFIX}{name}"))?);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let files = TlsFiles::client(dir, name);
    issue(dir, params, &files)?;
    Ok(files)
}

/// The flotilla identity a DER certificate names in its subject
/// alternative name URI. Does not check who signed it: the TLS handshake
/// (or [`Credentials::load`]) does.
pub fn identity_of(cert_der: &[u8]) -> Result<Identity, TlsError> {
    identity_in(cert_der, "the certificate")
}

fn identity_in(cert_der: &[u8], origin: &str) -> Result<Identity, TlsError> {
    let bad = |reason: String| TlsError::BadCertificate {
        origin: origin.to_string(),
        reason,
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| bad(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?;
    let mut uris = san
        .iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("flotilla:") => {
                Some(*uri)
            }
            _ => None,
        });
    let Some(uri) = uris.next() else {
        return Err(TlsError::NoIdentity {
            origin: origin.to_string(),
        });
    };
    if let Some(other) = uris.next() {
        return Err(TlsError::BadIdentity {
            origin: origin.to_string(),
            reason: format!("two flotilla identities, {uri} and {other}"),
        });
    }
    parse_identity_uri(uri).ok_or_else(|| TlsError::BadIdentity {
        origin: origin.to_string(),
        reason: format!(
            "malformed identity {uri:?}: expected {NODE_URI_PREFIX}<id> or \
             {CLIENT_URI_PREFIX}<name>"
        ),
    })
}

fn parse_identity_uri(uri: &str) -> Option<Identity> {
    if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
        // `u64::from_str` accepts a leading '+'; an identity has one spelling.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return id.parse().ok().map(Identity::Node);
    }
    let name = uri.strip_prefix(CLIENT_URI_PREFIX)?;
    check_client_name(name).ok()?;
    Some(Identity::Client(name.to_string()))
}

/// A holder's certificate and key, loaded and checked against the cluster
/// CA: what both ends of a connection need to build their TLS settings.
pub struct Credentials {
    identity: Identity,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads `files` and checks them the way a peer will: the certificate
    /// is signed by the CA, is valid now, carries a flotilla identity (a
    /// node's also the DNS name [`node_server_name`]), and the key belongs
    /// to it. A node that would be refused by every peer fails here, with
    /// the file to fix, instead of in every handshake.
    pub fn load(files: &TlsFiles) -> Result<Credentials, TlsError> {
        let ca = read_certificate(&files.ca_cert, "cluster CA certificate")?;
        let cert = read_certificate(&files.cert, "certificate")?;
        let key = read_key(&files.key)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(|e| TlsError::BadCertificate {
            origin: files.ca_cert.display().to_string(),
            reason: e.to_string(),
        })?;
        let roots = Arc::new(roots);
        let identity = identity_in(&cert, &files.cert.display().to_string())?;
        let rejected = |error: rustls::Error| ca_rejection(files, error);
        let now = UnixTime::now();
        client_verifier(&roots)?
            .verify_client_cert(&cert, &[], now)
            .map_err(rejected)?;
        if let Identity::Node(id) = identity {
            let name = ServerName::try_from(node_server_name(id))
                .map_err(|e| TlsError::Config(e.to_string()))?;
            server_verifier(&roots)?
                .verify_server_cert(&cert, &[], &name, &[], now)
                .map_err(rejected)?;
        }
        rustls::sign::CertifiedKey::from_der(vec![cert.clone()], key.clone_key(), &provider())
            .map_err(|error| match error {
                rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                },
                other => TlsError::NotPem {
                    path: files.key.clone(),
                    what: "private key",
                    reason: other.to_string(),
                },
            })?;
        Ok(Credentials {
            identity,
            roots,
            chain: vec![cert],
            key,
        })
    }

    /// Like [`Credentials::load`], and the certificate must be `expected`'s.
    pub fn load_for(files: &TlsFiles, expected: &Identity) -> Result<Credentials, TlsError> {
        let credentials = Credentials::load(files)?;
        if credentials.identity != *expected {
            return Err(TlsError::WrongIdentity {
                cert: files.cert.clone(),
                expected: expected.clone(),
                actual: credentials.identity,
            });
        }
        Ok(credentials)
    }

    /// Whose certificate this is.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Settings for accepting connections: TLS 1.3 only (QUIC requires
    /// it), a client certificate signed by the CA required, no 0-RTT
    /// (replayable data has no place in Raft traffic).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_client_cert_verifier(client_verifier(&self.roots)?)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(config_error)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// Settings for dialing: TLS 1.3 only, the server certificate verified
    /// against the CA and the server name dialed, this certificate
    /// presented to the server.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_webpki_verifier(server_verifier(&self.roots)?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(config_error)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// ring, not aws-lc-rs: aws-lc-rs needs cmake and a C toolchain to build.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_verifier(
    roots: &Arc<RootCertStore>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

fn server_verifier(roots: &Arc<RootCertStore>) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(Arc::clone(roots), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

fn config_error(error: rustls::Error) -> TlsError {
    TlsError::Config(error.to_string())
}

fn ca_rejection(files: &TlsFiles, error: rustls::Error) -> TlsError {
    let (cert, ca) = (files.cert.clone(), files.ca_cert.clone());
    let reason = error.to_string();
    match error {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => TlsError::NotSignedByCa { cert, ca, reason },
        _ => TlsError::CertificateRejected { cert, ca, reason },
    }
}

fn generate_error(error: rcgen::Error) -> TlsError {
    TlsError::Generate(error.to_string())
}

fn check_client_name(name: &str) -> Result<(), TlsError> {
    let valid = !name.is_empty()
        && name.len() <= CLIENT_NAME_BYTES_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(TlsError::InvalidName {
            name: name.to_string(),
        })
    }
}

fn uri_san(uri: &str) -> Result<SanType, TlsError> {
    let uri = uri.to_string().try_into().map_err(generate_error)?;
    Ok(SanType::URI(uri))
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - TimeDuration::days(1);
    params.not_after = now + TimeDuration::days(days);
}

/// Parameters of a leaf certificate valid for `hosts` (IP addresses become
/// IP SANs, anything else DNS SANs).
fn leaf_params(hosts: &[String]) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    for host in hosts {
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                let name =
                    host.clone()
                        .try_into()
                        .map_err(|e: rcgen::Error| TlsError::InvalidHost {
                            host: host.clone(),
                            reason: e.to_string(),
                        })?;
                SanType::DnsName(name)
            }
        };
        params.subject_alt_names.push(san);
    }
    params.distinguished_name = DistinguishedName::new();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, CERT_VALIDITY_DAYS);
    Ok(params)
}

/// Signs `params` with the CA of `dir` and writes the certificate and a new
/// key to `files`, then reads them back and checks them as a peer would.
fn issue(dir: &Path, params: CertificateParams, files: &TlsFiles) -> Result<(), TlsError> {
    let (ca_cert, ca_key) = load_ca(dir)?;
    let key = KeyPair::generate().map_err(generate_error)?;
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(generate_error)?;
    write_replacing(&files.key, key.serialize_pem().as_bytes(), true)?;
    write_replacing(&files.cert, cert.pem().as_bytes(), false)?;
    Credentials::load(files)?;
    Ok(())
}

/// The CA of `dir`, as rcgen needs it to sign: its parameters re-read from
/// `ca.crt` (so the issuer name matches exactly) and its key, checked to
/// belong to it.
fn load_ca(dir: &Path) -> Result<(Certificate, KeyPair), TlsError> {
    let cert_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    let cert_der = read_certificate(&cert_path, "cluster CA certificate")?;
    let key_pem = read_file(&key_path, "cluster CA key")?;
    let key_pem = String::from_utf8(key_pem).map_err(|_| TlsError::NotPem {
        path: key_path.clone(),
        what: "private key",
        reason: "not UTF-8 text".into(),
    })?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::NotPem {
        path: key_path.clone(),
        what: "private key",
        reason: e.to_string(),
    })?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&cert_der).map_err(|e| TlsError::BadCertificate {
            origin: cert_path.display().to_string(),
            reason: e.to_string(),
        })?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(TlsError::KeyMismatch {
            cert: cert_path,
            key: key_path,
        });
    }
    let params = CertificateParams::from_ca_cert_der(&cert_der).map_err(generate_error)?;
    let cert = params.self_signed(&key).map_err(generate_error)?;
    Ok((cert, key))
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TlsError::Missing {
            path: path.to_path_buf(),
            what,
        },
        _ => TlsError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// The first certificate of a PEM file.
fn read_certificate(path: &Path, what: &'static str) -> Result<CertificateDer<'static>, TlsError> {
    let pem = read_file(path, what)?;
    let not_pem = |reason: String| TlsError::NotPem {
        path: path.to_path_buf(),
        what,
        reason,
    };
    match CertificateDer::pem_slice_iter(&pem).next() {
        Some(Ok(cert)) => Ok(cert),
        Some(Err(error)) => Err(not_pem(error.to_string())),
        None => Err(not_pem("no CERTIFICATE section".into())),
    }
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| TlsError::NotPem {
        path: path.to_path_buf(),
        what: "private key",
        reason: error.to_string(),
    })
}

/// Creates `path`, failing if it exists; `private` files get mode 0600
/// from the start, never readable by others even briefly.
fn write_new(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file =
        open_options(private)
            .create_new(true)
            .open(path)
            .map_err(|source: std::io::Error| match source.kind() {
                std::io::ErrorKind::AlreadyExists => TlsError::CaExists {
                    path: path.to_path_buf(),
                },
                _ => io(source),
            })?;
    write_synced(&mut file, bytes).map_err(io)
}

/// Writes `path` through a temporary file and a rename, so that a crash
/// leaves the old file or the new one, never half of one.
fn write_replacing(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = open_options(private)
        .create_new(true)
        .open(&tmp)
        .map_err(io)?;
    write_synced(&mut file, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn open_options(private: bool) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    options
}

fn write_synced(file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_have_one_spelling() {
        assert_eq!(
            parse_identity_uri("flotilla://node/7"),
            Some(Identity::Node(7))
        );
        assert_eq!(
            parse_identity_uri("flotilla://client/admin-1"),
            Some(Identity::Client("admin-1".into()))
        );
        for bad in [
            "flotilla://node/",
            "flotilla://node/+7",
            "flotilla://node/7/x",
            "flotilla://node/18446744073709551616",
            "flotilla://client/",
            "flotilla://client/a/b",
            "flotilla://client/.hidden",
            "flotilla://other/1",
        ] {
            assert_eq!(parse_identity_uri(bad), None, "{bad}");
        }
    }

    fn der(path: &Path) -> CertificateDer<'static> {
        read_certificate(path, "certificate").unwrap()
    }

    #[test]
    fn init_ca_refuses_to_overwrite_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let before = std::fs::read(dir.path().join("ca.crt")).unwrap();
        let error = init_ca(dir.path()).unwrap_err();
        assert!(matches!(&error, TlsError::CaExists { .. }), "{error}");
        assert!(error.to_string().contains("ca.crt"), "{error}");
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), before);
        // A lone key blocks too: it may be the only copy of the CA's key.
        std::fs::remove_file(dir.path().join("ca.crt")).unwrap();
        let error = init_ca(dir.path()).unwrap_err();
        assert!(error.to_string().contains("ca.key"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let files = issue_node_cert(dir.path(), 3, &[]).unwrap();
        for key in [dir.path().join("ca.key"), files.key] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
    }

    #[test]
    fn certificates_name_their_holder() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let hosts = ["127.0.0.1".to_string(), "db-7.example.com".to_string()];
        let node = issue_node_cert(dir.path(), 7, &hosts).unwrap();
        assert_eq!(node, TlsFiles::node(dir.path(), 7));
        assert_eq!(identity_of(&der(&node.cert)).unwrap(), Identity::Node(7));
        let client = issue_client_cert(dir.path(), "admin").unwrap();
        assert_eq!(
            identity_of(&der(&client.cert)).unwrap(),
            Identity::Client("admin".into())
        );
        assert_eq!(
            Credentials::load(&client).unwrap().identity(),
            &Identity::Client("admin".into())
        );
        let error = Credentials::load_for(&node, &Identity::Node(8)).unwrap_err();
        assert!(matches!(error, TlsError::WrongIdentity { .. }), "{error}");
        // The CA itself names nobody.
        let error = identity_of(&der(&dir.path().join("ca.crt"))).unwrap_err();
        assert!(matches!(error, TlsError::NoIdentity { .. }), "{error}");
        assert!(matches!(
            identity_of(b"not a certificate"),
            Err(TlsError::BadCertificate { .. })
        ));
        assert!(matches!(
            issue_client_cert(dir.path(), "../escape"),
            Err(TlsError::InvalidName { .. })
        ));
    }

    #[test]
    fn a_certificate_of_another_ca_is_rejected_naming_the_files() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        init_ca(ours.path()).unwrap();
        init_ca(theirs.path()).unwrap();
        let foreign = issue_node_cert(theirs.path(), 1, &[]).unwrap();
        let files = TlsFiles {
            ca_cert: ours.path().join("ca.crt"),
            ..foreign
        };
        let error = Credentials::load(&files).unwrap_err();
        assert!(matches!(error, TlsError::NotSignedByCa { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("node-1.crt"), "{message}");
        assert!(message.contains("ca.crt"), "{message}");
    }

    #[test]
    fn missing_garbled_and_mismatched_files_say_which_file() {
        let dir = tempfile::tempdir().unwrap();
        let error = issue_node_cert(dir.path(), 1, &[]).unwrap_err();
        assert!(matches!(error, TlsError::Missing { .. }), "{error}");
        assert!(error.to_string().contains("ca.crt"), "{error}");
        init_ca(dir.path()).unwrap();
        let one = issue_node_cert(dir.path(), 1, &[]).unwrap();
        let two = issue_node_cert(dir.path(), 2, &[]).unwrap();
        let mismatched = TlsFiles {
            key: two.key.clone(),
            ..one.clone()
        };
        let error = Credentials::load(&mismatched).unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
        std::fs::write(&one.cert, b"hello").unwrap();
        let error = Credentials::load(&one).unwrap_err();
        assert!(matches!(error, TlsError::NotPem { .. }), "{error}");
        assert!(error.to_string().contains("node-1.crt"), "{error}");
    }

    #[test]
    fn client_names_are_safe_file_names() {
        assert!(check_client_name("admin_2.ops-x").is_ok());
        for bad in ["", ".", "../x", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_client_name(bad).is_err(), "{bad:?}");
        }
    }
}
