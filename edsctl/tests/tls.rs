//! `--server https://...` with `--ca-file`, `--cert-file`/`--key-file` and
//! `--tls-server-name`, against a small TLS server on loopback that requires
//! a client certificate (mTLS) and answers `/debug/snapshot` from the golden
//! fixture. eds-server's admin port speaks plain HTTP today; this pins what
//! edsctl does when it sits behind TLS (a proxy, or a later eds-server).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const WAIT: Duration = Duration::from_secs(30);

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> anyhow::Result<Pki> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, usage| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        vec!["eds-server.test".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) =
        leaf(vec!["edsctl".into()], ExtendedKeyUsagePurpose::ClientAuth)?;
    Ok(Pki {
        ca: ca.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    })
}

/// Serves every connection with one canned HTTP response, requiring a
/// client certificate signed by the CA.
async fn serve(pki: &Pki, body: String) -> anyhow::Result<std::net::SocketAddr> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca.as_bytes()) {
        roots.add(c?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.server_cert.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes())?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Ok(addr)
}

async fn edsctl(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_edsctl"))
            .args(args)
            .env("NO_COLOR", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("edsctl did not finish")??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

#[tokio::test]
async fn mtls_with_a_private_ca_and_clear_failures_without_it() -> anyhow::Result<()> {
    let pki = pki()?;
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/fixtures/snapshot.json"),
    )?;
    let addr = serve(&pki, fixture).await?;
    let dir = std::env::temp_dir().join(format!("edsctl-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca = write(&dir, "ca.pem", &pki.ca)?;
    let cert = write(&dir, "client.pem", &pki.client_cert)?;
    let key = write(&dir, "client.key", &pki.client_key)?;
    let server = format!("https://{addr}");
    let base = [
        "--server",
        server.as_str(),
        "--tls-server-name",
        "eds-server.test",
        "--request-timeout",
        "5s",
    ];
    let with = |extra: &[&str]| {
        let mut v: Vec<String> = base.iter().map(|s| (*s).to_owned()).collect();
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v.push("services".into());
        v
    };

    let args = with(&["--ca-file", &ca, "--cert-file", &cert, "--key-file", &key]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = edsctl(&args).await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("echo.demo:8080"), "{stdout}");

    // No client certificate: the server refuses; edsctl says where it went.
    let args = with(&["--ca-file", &ca]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = edsctl(&args).await?;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains(&server), "{stderr}");

    // The system roots do not know the private CA.
    let args = with(&["--cert-file", &cert, "--key-file", &key]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = edsctl(&args).await?;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");

    // A certificate without its key is a usage error.
    let args = with(&["--ca-file", &ca, "--cert-file", &cert]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = edsctl(&args).await?;
    assert_eq!(code, 2, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
