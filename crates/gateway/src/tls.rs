//! mTLS on the HTTP face (`[gateway.tls]`): TLS 1.3 with a server X.509-SVID that Warden's CA
//! mints for the gateway's own SPIFFE ID (re-minted at half its lifetime and on every CA
//! rotation), and a required client X.509-SVID that must chain to the trust bundle and name a
//! configured agent or approver (`warden_identity::tls` verifiers). The caller's identity is then
//! the client SVID's SPIFFE ID; a JWT-SVID bearer sent as well must name the same ID.
//!
//! Handshakes run in their own tasks with a deadline, so a slow client holds up nobody else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use warden_identity::SpiffeId;
use warden_identity::tls::{
    Authorizer, SpiffeIdMatcher, SvidStore, TrustStore, peer_spiffe_id, server_config,
};
use warden_identity::workload::SharedAuthority;

use crate::config::GatewayConfig;
use crate::error::Error;
use crate::http::HttpFace;

/// A TLS handshake must finish within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Never wait longer than this between server SVID renewals.
const MAX_RENEWAL: Duration = Duration::from_secs(600);

/// The peer of an mTLS connection: its address and the SPIFFE ID of its verified client SVID.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    /// Remote address.
    pub addr: SocketAddr,
    /// The SPIFFE ID of the client's SVID (empty for the listener's own address).
    pub spiffe_id: String,
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, MtlsListener>> for TlsPeer {
    fn connect_info(stream: IncomingStream<'_, MtlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// The authenticated mTLS peer of a request, if the face serves mTLS.
#[derive(Debug, Clone, Default)]
pub(crate) struct Peer(pub(crate) Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<TlsPeer>>()
                .map(|c| c.0.spiffe_id.clone())
                .filter(|id| !id.is_empty()),
        ))
    }
}

/// The SPIFFE IDs that may connect: the manifest's agents and the approvers.
pub(crate) fn allowed_clients(cfg: &GatewayConfig) -> Vec<String> {
    cfg.manifest()
        .agents()
        .iter()
        .map(|a| a.id.clone())
        .chain(cfg.gateway.approvers.iter().cloned())
        .collect()
}

/// The HTTP face's TLS side: the server SVID, the trust bundle and the client rule.
pub struct MtlsFace {
    ca: SharedAuthority,
    id: SpiffeId,
    svid: SvidStore,
    trust: TrustStore,
    expiry: SystemTime,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for MtlsFace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsFace")
            .field("spiffe_id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MtlsFace {
    /// Reads `[gateway.tls]` of `cfg`, mints the gateway's server SVID with `ca` and builds the
    /// rustls configuration that admits client SVIDs of configured agents and approvers only.
    pub fn new(cfg: &GatewayConfig, ca: SharedAuthority) -> Result<Self, Error> {
        let Some(tls) = &cfg.gateway.tls else {
            return Err(Error::Config("no `[gateway.tls]` table".into()));
        };
        let id = SpiffeId::new(&tls.spiffe_id)
            .map_err(|e| Error::Config(format!("[gateway.tls] spiffe_id: {e}")))?;
        let td = ca.with(|ca| ca.trust_domain().clone());
        if id.trust_domain() != &td {
            return Err(Error::Config(format!(
                "[gateway.tls] spiffe_id `{id}` is not in the CA's trust domain `{td}`"
            )));
        }
        let mut rules = Vec::new();
        for client in allowed_clients(cfg) {
            let client = SpiffeId::new(&client)
                .map_err(|e| Error::Config(format!("client `{client}`: {e}")))?;
            rules.push(SpiffeIdMatcher::Exact(client));
        }
        let svid = ca
            .mint_x509_svid(&id)
            .map_err(|e| Error::Config(format!("minting the server SVID: {e}")))?;
        let expiry = svid.expiry();
        let svid = SvidStore::new(&svid).map_err(|e| Error::Config(e.to_string()))?;
        let trust = TrustStore::new(ca.bundle());
        let mut config = server_config(svid.clone(), trust.clone(), Authorizer::any_of(rules))
            .map_err(|e| Error::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            ca,
            id,
            svid,
            trust,
            expiry,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Serves `face` over mTLS on `listener` until the task is dropped; renews the server SVID
    /// and the trust bundle in the background.
    pub async fn serve(&self, face: &Arc<HttpFace>, listener: TcpListener) -> Result<(), Error> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        let accept = tokio::spawn(accept_loop(listener, acceptor, tx));
        let renew = tokio::spawn(renew_loop(
            self.ca.clone(),
            self.id.clone(),
            self.svid.clone(),
            self.trust.clone(),
            self.expiry,
        ));
        let result = axum::serve(
            MtlsListener { rx, local },
            face.router()
                .into_make_service_with_connect_info::<TlsPeer>(),
        )
        .await
        .map_err(Error::Io);
        accept.abort();
        renew.abort();
        result
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, TlsPeer)>,
) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            // A failed or slow handshake (no client SVID, foreign CA, expired, unauthorized ID)
            // just drops the connection; rustls has sent the alert.
            let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let Ok(id) = peer_spiffe_id(stream.get_ref().1) else {
                return;
            };
            let _ = tx
                .send((
                    stream,
                    TlsPeer {
                        addr,
                        spiffe_id: id.to_string(),
                    },
                ))
                .await;
        });
    }
}

async fn renew_loop(
    ca: SharedAuthority,
    id: SpiffeId,
    svid: SvidStore,
    trust: TrustStore,
    mut expiry: SystemTime,
) {
    let mut changes = ca.subscribe();
    loop {
        let now = SystemTime::now();
        let half = expiry.duration_since(now).unwrap_or_default() / 2;
        tokio::select! {
            _ = tokio::time::sleep(half.clamp(Duration::from_secs(1), MAX_RENEWAL)) => {}
            r = changes.changed() => if r.is_err() { return; },
        }
        // The CA may be served by no Workload API in this process: keep it rotating. A failed
        // rotation leaves the current keys in force.
        let _ = ca.maintain();
        trust.set(ca.bundle());
        // A failed renewal keeps the current SVID; it is retried at the next wake-up.
        if let Ok(new) = ca.mint_x509_svid(&id)
            && svid.set(&new).is_ok()
        {
            expiry = new.expiry();
        }
    }
}

/// Connections whose mTLS handshake succeeded, with their peer.
#[derive(Debug)]
pub struct MtlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, TlsPeer)>,
    local: SocketAddr,
}

impl Listener for MtlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop ended: never hand out another connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(TlsPeer {
            addr: self.local,
            spiffe_id: String::new(),
        })
    }
}
