//! TLS towards backends: lb-client dials a real tonic server that requires
//! a client certificate (mTLS) on loopback, checks the server's certificate
//! against the Service's cluster DNS name, and shows its own identity.
//!
//! Each way it can go wrong fails the request with UNAVAILABLE and a reason
//! that names the cause: an untrusted CA, a certificate for another name, no
//! client certificate, and plaintext towards a TLS port.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use lb_client::{BackendTls, LbClient, LbConfig, ServiceOptions};
use lb_core::Endpoint;
use proto::echo::echo_client::EchoClient;
use proto::echo::echo_server::{Echo, EchoServer};
use proto::echo::{EchoReply, EchoRequest};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

const KEY: &str = "echo.demo:8080";
/// The name lb-client checks by default for `KEY`.
const SERVICE_DNS: &str = "echo.demo.svc.cluster.local";

/// Answers with the number of certificates the client showed.
struct Backend;

#[tonic::async_trait]
impl Echo for Backend {
    async fn echo(&self, r: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let shown = r.peer_certs().map_or(0, |c| c.len());
        Ok(Response::new(EchoReply {
            message: format!("client certificates: {shown}"),
            pod: "tls".into(),
            ..Default::default()
        }))
    }
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(common_name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A leaf for `names`: (certificate PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A TLS echo server that requires a client certificate from `ca`.
async fn serve(ca: &Ca) -> anyhow::Result<SocketAddr> {
    let (cert, key) = ca.leaf(&[SERVICE_DNS])?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(&ca.pem));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = Server::builder()
        .tls_config(tls)?
        .add_service(EchoServer::new(Backend))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    Ok(address)
}

/// One echo through lb-client configured with `tls` (and `server_name`).
async fn echo_via(
    address: SocketAddr,
    tls: Option<BackendTls>,
    server_name: Option<&str>,
) -> anyhow::Result<Result<String, Status>> {
    let mut config = LbConfig::from_env();
    config.control_plane = None;
    config.backend_tls = tls;
    config.connect_timeout = Duration::from_secs(5);
    config.default_service = ServiceOptions {
        tls_server_name: server_name.map(str::to_owned),
        ..ServiceOptions::default()
    };
    let client = LbClient::connect(config)?;
    client.set_endpoints(KEY, vec![Endpoint::new(address)])?;
    let mut echo = EchoClient::new(client.channel(KEY)?);
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        echo.echo(EchoRequest {
            message: "hi".into(),
            work_us: 0,
        }),
    )
    .await
    .context("the request hung")?;
    Ok(reply.map(|r| r.into_inner().message))
}

fn expect_unavailable(result: Result<String, Status>, cause: &str) -> anyhow::Result<()> {
    let status = match result {
        Ok(m) => anyhow::bail!("expected a failure naming {cause:?}, got a reply {m:?}"),
        Err(s) => s,
    };
    anyhow::ensure!(
        status.code() == tonic::Code::Unavailable,
        "expected UNAVAILABLE, got {status:?}"
    );
    anyhow::ensure!(
        status.message().contains(cause),
        "expected the reason to name {cause:?}: {}",
        status.message()
    );
    Ok(())
}

#[tokio::test]
async fn mtls_to_a_backend_checked_against_the_service_name() -> anyhow::Result<()> {
    let ca = Ca::new("eds test CA")?;
    let address = serve(&ca).await?;
    let (cert, key) = ca.leaf(&["client.demo"])?;
    let trusted = BackendTls::new(ca.pem.as_bytes())?;
    let mtls = trusted
        .clone()
        .with_identity(cert.as_bytes(), key.as_bytes())?;

    // Trusted CA, the Service's DNS name (default), identity shown.
    let reply = echo_via(address, Some(mtls.clone()), None).await?;
    assert_eq!(
        reply.map_err(|s| s.to_string()),
        Ok("client certificates: 1".to_owned())
    );

    // The same name set explicitly works too; another name does not.
    let reply = echo_via(address, Some(mtls.clone()), Some(SERVICE_DNS)).await?;
    assert!(reply.is_ok(), "{reply:?}");
    let reply = echo_via(
        address,
        Some(mtls.clone()),
        Some("other.demo.svc.cluster.local"),
    )
    .await?;
    expect_unavailable(reply, "not valid for name")?;

    // A certificate from a CA the client does not trust.
    let stranger = Ca::new("another CA")?;
    let (cert, key) = stranger.leaf(&["client.demo"])?;
    let untrusting =
        BackendTls::new(stranger.pem.as_bytes())?.with_identity(cert.as_bytes(), key.as_bytes())?;
    let reply = echo_via(address, Some(untrusting), None).await?;
    expect_unavailable(reply, "UnknownIssuer")?;

    // No client certificate: the server refuses it with a TLS alert, which
    // the reason carries from under hyper's "connection error".
    let reply = echo_via(address, Some(trusted), None).await?;
    expect_unavailable(reply, "fatal alert: CertificateRequired")?;

    // Plaintext HTTP/2 towards a TLS port: the server answers with a TLS
    // alert or hangs up, whichever the client reads first.
    let reply = echo_via(address, None, None).await?;
    expect_unavailable(reply, &format!("request to {address} for {KEY} failed"))?;
    Ok(())
}
