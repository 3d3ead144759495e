//! The SPIFFE Workload API, served over a unix socket.
//!
//! Every call must carry the `workload.spiffe.io: true` metadata (else `InvalidArgument`). The
//! caller is attested from the socket's peer credentials into SPIRE's unix selectors (see
//! [`attest`]); registration entries whose selectors the caller all shows give it SPIFFE IDs.
//! A caller no entry matches gets `PermissionDenied`.
//!
//! Streams (`FetchX509SVID`, `FetchX509Bundles`, `FetchJWTBundles`) send a full snapshot, then a
//! new one whenever the CA rotates or the entries change, and for X.509-SVIDs also when half the
//! shortest SVID lifetime has passed, so that workloads always hold an SVID well before expiry.
//! Those refresh timers use tokio's monotonic time; the validity periods use the CA's clock.

pub mod attest;

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::{
    CertificateAuthority, Error, JwtSvid, RegistrationEntry, Selector, SpiffeId, TrustBundle,
    X509Svid, validate_jwt_svid,
};
use attest::{AttestedStream, PeerInfo};

/// Code generated from `proto/workload.proto`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
pub mod proto {
    tonic::include_proto!("_");
}

use proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

/// The metadata key every Workload API call must carry with the value `true`.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// Never wait longer than this between X.509-SVID refreshes.
const MAX_REFRESH: Duration = Duration::from_secs(600);
/// How often the server checks whether the CA should rotate or prune keys.
const MAINTENANCE_PERIOD: Duration = Duration::from_secs(30);

/// A CA shared by the Workload API, the CLI and the gateway; announces every change.
#[derive(Clone, Debug)]
pub struct SharedAuthority {
    ca: Arc<RwLock<CertificateAuthority>>,
    changes: Arc<watch::Sender<u64>>,
    /// Where rotations are saved, so that a restart keeps the keys SVIDs were signed with.
    persist: Option<Arc<std::path::PathBuf>>,
}

impl SharedAuthority {
    /// Shares `ca`.
    pub fn new(ca: CertificateAuthority) -> Self {
        let (tx, _) = watch::channel(0);
        Self {
            ca: Arc::new(RwLock::new(ca)),
            changes: Arc::new(tx),
            persist: None,
        }
    }

    /// Shares `ca` and saves it to `path` (0600) after every rotation or pruning.
    pub fn persisted(ca: CertificateAuthority, path: std::path::PathBuf) -> Self {
        let mut shared = Self::new(ca);
        shared.persist = Some(Arc::new(path));
        shared
    }

    fn save(&self) -> Result<(), Error> {
        match &self.persist {
            Some(path) => self.read().save(path),
            None => Ok(()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CertificateAuthority> {
        match self.ca.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CertificateAuthority> {
        match self.ca.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Rotates the CA's keys and pushes new SVIDs and bundles to every open stream.
    pub fn rotate(&self) -> Result<(), Error> {
        self.write().rotate()?;
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        self.save()
    }

    /// Drops keys no longer needed; pushes new bundles if any went.
    pub fn prune_expired(&self) -> Result<(), Error> {
        if self.write().prune_expired() {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
            self.save()?;
        }
        Ok(())
    }

    /// The current bundle.
    pub fn bundle(&self) -> TrustBundle {
        self.read().bundle()
    }

    /// Mints an X.509-SVID.
    pub fn mint_x509_svid(&self, id: &SpiffeId) -> Result<X509Svid, Error> {
        self.read().mint_x509_svid(id)
    }

    /// Mints a JWT-SVID.
    pub fn mint_jwt_svid(&self, id: &SpiffeId, audience: &[String]) -> Result<JwtSvid, Error> {
        self.read().mint_jwt_svid(id, audience)
    }

    /// Runs `f` on the CA (e.g. to save it).
    pub fn with<R>(&self, f: impl FnOnce(&CertificateAuthority) -> R) -> R {
        f(&self.read())
    }

    /// A receiver that changes on every rotation or pruning.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Rotates the CA's keys when less than half the CA's lifetime remains, and drops keys no
    /// longer needed. The Workload API server calls it periodically; so does the gateway's mTLS
    /// face, which may run without it.
    pub fn maintain(&self) -> Result<(), Error> {
        let due = {
            let ca = self.read();
            let now = ca.clock().now();
            let half = ca.policy().ca_ttl / 2;
            ca.active_not_after()
                .is_none_or(|end| end.duration_since(now).map_or(true, |left| left < half))
        };
        if due {
            self.rotate()?;
        }
        self.prune_expired()
    }
}

/// The registration entries in force; replaceable while serving.
#[derive(Clone, Debug)]
pub struct EntryStore {
    entries: Arc<RwLock<Vec<RegistrationEntry>>>,
    changes: Arc<watch::Sender<u64>>,
}

impl EntryStore {
    /// A store holding `entries`.
    pub fn new(entries: Vec<RegistrationEntry>) -> Self {
        let (tx, _) = watch::channel(0);
        Self {
            entries: Arc::new(RwLock::new(entries)),
            changes: Arc::new(tx),
        }
    }

    /// Replaces the entries; open streams re-evaluate their caller.
    pub fn set(&self, entries: Vec<RegistrationEntry>) {
        match self.entries.write() {
            Ok(mut g) => *g = entries,
            Err(p) => *p.into_inner() = entries,
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The entries a caller showing `selectors` is entitled to, in order.
    pub fn matching(&self, selectors: &[Selector]) -> Vec<RegistrationEntry> {
        let guard = match self.entries.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard
            .iter()
            .filter(|e| e.matches(selectors))
            .cloned()
            .collect()
    }
}

/// The Workload API service.
#[derive(Clone, Debug)]
pub struct WorkloadApi {
    ca: SharedAuthority,
    entries: EntryStore,
}

impl WorkloadApi {
    /// A service minting from `ca` for the callers `entries` register.
    pub fn new(ca: SharedAuthority, entries: EntryStore) -> Self {
        Self { ca, entries }
    }

    /// Serves on a unix socket at `socket_path` until `shutdown` completes. A stale socket file
    /// is replaced; any other file there is an error. The socket is made connectable by every
    /// local user: attestation, not file permissions, decides who gets an identity.
    pub async fn serve(
        self,
        socket_path: &Path,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
        if let Ok(meta) = std::fs::symlink_metadata(socket_path) {
            if !meta.file_type().is_socket() {
                return Err(Error::Serve(format!(
                    "`{}` exists and is not a socket",
                    socket_path.display()
                )));
            }
            std::fs::remove_file(socket_path).map_err(|e| Error::io(socket_path, e))?;
        }
        let listener =
            tokio::net::UnixListener::bind(socket_path).map_err(|e| Error::io(socket_path, e))?;
        std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| Error::io(socket_path, e))?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener)
            .map(|conn| conn.map(AttestedStream::new));

        let ca = self.ca.clone();
        let maintenance = tokio::spawn(async move {
            let mut tick = tokio::time::interval(MAINTENANCE_PERIOD);
            loop {
                tick.tick().await;
                // A failed rotation leaves the current keys in force; it is retried next tick.
                let _ = ca.maintain();
            }
        });
        let result = tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(self))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| Error::Serve(e.to_string()));
        maintenance.abort();
        let _ = std::fs::remove_file(socket_path);
        result
    }

    /// Checks the header, attests the caller and returns the entries it is entitled to.
    async fn caller<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(Vec<Selector>, Vec<RegistrationEntry>), Status> {
        check_header(request)?;
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::permission_denied("caller could not be attested"))?;
        let selectors = tokio::task::spawn_blocking(move || peer.selectors())
            .await
            .map_err(|_| Status::internal("attestation task failed"))?
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        let entries = self.entries.matching(&selectors);
        if entries.is_empty() {
            return Err(Status::permission_denied(
                "no identity issued to the caller",
            ));
        }
        Ok((selectors, entries))
    }

    fn x509_response(
        &self,
        entries: &[RegistrationEntry],
    ) -> Result<(proto::X509svidResponse, Duration), Status> {
        let bundle = self.ca.bundle();
        let bundle_der = bundle.x509_der_concatenated();
        let now = self.ca.with(|ca| ca.clock().now());
        let mut refresh = MAX_REFRESH;
        let mut svids = Vec::with_capacity(entries.len());
        for entry in entries {
            let svid = self
                .ca
                .mint_x509_svid(entry.spiffe_id())
                .map_err(|e| Status::internal(e.to_string()))?;
            let left = svid.expiry().duration_since(now).unwrap_or_default();
            refresh = refresh.min(left / 2).max(Duration::from_secs(1));
            svids.push(proto::X509svid {
                spiffe_id: entry.spiffe_id().to_string(),
                x509_svid: svid
                    .cert_chain()
                    .iter()
                    .flat_map(|c| c.as_ref().iter().copied())
                    .collect(),
                x509_svid_key: svid.private_key_pkcs8().to_vec(),
                bundle: bundle_der.clone(),
                hint: entry.hint().to_owned(),
            });
        }
        Ok((
            proto::X509svidResponse {
                svids,
                crl: Vec::new(),
                federated_bundles: HashMap::new(),
            },
            refresh,
        ))
    }

    fn x509_bundles(&self) -> proto::X509BundlesResponse {
        let bundle = self.ca.bundle();
        proto::X509BundlesResponse {
            crl: Vec::new(),
            bundles: HashMap::from([(
                bundle.trust_domain().id_string(),
                bundle.x509_der_concatenated(),
            )]),
        }
    }

    fn jwt_bundles(&self) -> Result<proto::JwtBundlesResponse, Status> {
        let bundle = self.ca.bundle();
        let jwks = bundle
            .to_jwt_jwks()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(proto::JwtBundlesResponse {
            bundles: HashMap::from([(bundle.trust_domain().id_string(), jwks.into_bytes())]),
        })
    }
}

fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header `workload.spiffe.io: true` is missing",
        )),
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Runs a stream that sends `snapshot()` now and again on every change (and, if `refresh`
/// says so, after the time it returns), until the client goes away or an error is sent.
fn snapshot_stream<T, F>(
    api: WorkloadApi,
    selectors: Vec<Selector>,
    mut snapshot: F,
) -> ResponseStream<T>
where
    T: Send + 'static,
    F: FnMut(&WorkloadApi, &[RegistrationEntry]) -> Result<(T, Option<Duration>), Status>
        + Send
        + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let mut ca_changes = api.ca.subscribe();
    let mut entry_changes = api.entries.changes.subscribe();
    tokio::spawn(async move {
        loop {
            let entries = api.entries.matching(&selectors);
            let message = if entries.is_empty() {
                Err(Status::permission_denied(
                    "no identity issued to the caller",
                ))
            } else {
                snapshot(&api, &entries)
            };
            let (message, wait) = match message {
                Ok((m, wait)) => (Ok(m), wait),
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            if tx.send(message).await.is_err() {
                return;
            }
            let timer = tokio::time::sleep(wait.unwrap_or(Duration::MAX / 4));
            tokio::select! {
                r = ca_changes.changed() => if r.is_err() { return },
                r = entry_changes.changed() => if r.is_err() { return },
                () = timer => {},
                () = tx.closed() => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<proto::X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<proto::X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<proto::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<proto::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let (selectors, _) = self.caller(&request).await?;
        Ok(Response::new(snapshot_stream(
            self.clone(),
            selectors,
            |api, entries| {
                let (resp, refresh) = api.x509_response(entries)?;
                Ok((resp, Some(refresh)))
            },
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<proto::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let (selectors, _) = self.caller(&request).await?;
        Ok(Response::new(snapshot_stream(
            self.clone(),
            selectors,
            |api, _| Ok((api.x509_bundles(), None)),
        )))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<proto::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let (selectors, _) = self.caller(&request).await?;
        Ok(Response::new(snapshot_stream(
            self.clone(),
            selectors,
            |api, _| Ok((api.jwt_bundles()?, None)),
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<proto::JwtsvidRequest>,
    ) -> Result<Response<proto::JwtsvidResponse>, Status> {
        let (_, entries) = self.caller(&request).await?;
        let req = request.into_inner();
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let wanted: Vec<&RegistrationEntry> = if req.spiffe_id.is_empty() {
            entries.iter().collect()
        } else {
            let id = SpiffeId::new(&req.spiffe_id)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let chosen: Vec<_> = entries.iter().filter(|e| e.spiffe_id() == &id).collect();
            if chosen.is_empty() {
                return Err(Status::permission_denied(format!(
                    "no identity `{id}` issued to the caller"
                )));
            }
            chosen
        };
        let mut svids = Vec::with_capacity(wanted.len());
        for entry in wanted {
            let svid = self
                .ca
                .mint_jwt_svid(entry.spiffe_id(), &req.audience)
                .map_err(|e| Status::internal(e.to_string()))?;
            svids.push(proto::Jwtsvid {
                spiffe_id: svid.spiffe_id.to_string(),
                svid: svid.token,
                hint: entry.hint().to_owned(),
            });
        }
        Ok(Response::new(proto::JwtsvidResponse { svids }))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<proto::ValidateJwtsvidRequest>,
    ) -> Result<Response<proto::ValidateJwtsvidResponse>, Status> {
        let _ = self.caller(&request).await?;
        let req = request.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let bundle = self.ca.bundle();
        let now = self.ca.with(|ca| ca.clock().now());
        let claims = validate_jwt_svid(&req.svid, &req.audience, &bundle, now)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(proto::ValidateJwtsvidResponse {
            spiffe_id: claims.spiffe_id.to_string(),
            claims: Some(json_struct(claims.claims)),
        }))
    }
}

fn json_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, json_value(v))).collect(),
    }
}

fn json_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(json_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
