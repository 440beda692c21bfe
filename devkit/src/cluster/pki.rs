//! The local control plane's PKI: a CA, the API server's serving
//! certificate, client certificates and the service-account signing key.
//!
//! Generated fresh for each cluster directory with `rcgen` (ECDSA P-256), so
//! nothing secret is committed and no `openssl` binary is needed. Client
//! certificates follow Kubernetes' convention: the CN is the user name and
//! each O is a group (`system:masters` for the admin).
//!
//! Not a CA for anything but this one throwaway cluster.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Paths of the generated files, all PEM.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate (trusted by clients and used as the client CA).
    pub ca_cert: PathBuf,
    /// CA certificate contents.
    pub ca_pem: String,
    /// API server serving certificate and key.
    pub serving_cert: PathBuf,
    /// API server serving key.
    pub serving_key: PathBuf,
    /// Service-account token signing key (private) and its public half.
    pub sa_key: PathBuf,
    /// Service-account public key.
    pub sa_pub: PathBuf,
    /// The admin client identity (`system:masters`).
    pub admin: ClientCert,
}

/// A client certificate and key, as PEM text (for embedding in kubeconfigs).
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM.
    pub key_pem: String,
}

/// Issues certificates from the cluster's CA.
#[derive(Debug)]
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Authority {
    /// A new self-signed CA.
    pub fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "eds local control plane CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A serving certificate for `names` (DNS names or IP addresses).
    pub fn serving(&self, names: &[String]) -> anyhow::Result<ClientCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map_or("server", String::as_str),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for `user` in `groups`.
    pub fn client(&self, user: &str, groups: &[&str]) -> anyhow::Result<ClientCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes `text` (a PEM certificate or key) to `dir/name`; returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Writes a complete PKI for an API server reachable at `ips` into `dir`.
pub fn generate(dir: &Path, ips: &[IpAddr]) -> anyhow::Result<Pki> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = Authority::new()?;
    let mut names: Vec<String> = vec![
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
    ];
    names.extend(ips.iter().map(ToString::to_string));
    let serving = ca.serving(&names)?;
    let admin = ca.client("eds-admin", &["system:masters"])?;
    let sa = KeyPair::generate()?;

    let write = |name: &str, text: &str| write_file(dir, name, text);
    Ok(Pki {
        ca_cert: write("ca.crt", ca.ca_pem())?,
        ca_pem: ca.ca_pem().to_owned(),
        serving_cert: write("apiserver.crt", &serving.cert_pem)?,
        serving_key: write("apiserver.key", &serving.key_pem)?,
        sa_key: write("sa.key", &sa.serialize_pem())?,
        sa_pub: write("sa.pub", &sa.public_key_pem())?,
        admin,
    })
}
