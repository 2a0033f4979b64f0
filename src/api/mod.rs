//! The HTTP listeners: inference (8080), management (8081) and metrics (8082).
//!
//! Routing follows TorchServe's segment rules (any method runs inference, trailing slashes
//! ignored), so every listener has a single default service that dispatches on the path.

pub mod error;
pub mod grpc;
pub mod inference;
pub mod input;
pub mod management;
pub mod openapi;
pub mod response;
mod workflow;

use std::sync::Arc;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, CACHE_CONTROL, EXPIRES, PRAGMA};
use actix_web::http::ConnectionType;
use actix_web::{web, App, HttpMessage, HttpServer};

use crate::config::{Address, Settings};
use crate::registry::Registry;

/// What every request handler can reach.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub registry: Arc<Registry>,
    /// Every transport's way to run an inference.
    pub service: Arc<crate::serve::Service>,
    /// Registration and unregistration of models.
    pub loader: Arc<crate::loader::Loader>,
    pub canaries: Arc<crate::registry::canaries::Canaries>,
    /// Token authorization; `None` when disabled.
    pub tokens: Option<crate::auth::Tokens>,
    /// Configuration snapshots; `None` with `--ncs`.
    pub snapshots: Option<crate::snapshot::Snapshots>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Registered workflows (`/workflows`, `/wfpredict`).
    pub workflows: Arc<crate::workflow::Workflows>,
    /// The start-up models' background load.
    pub startup: crate::startup::StartupLoad,
    /// The multi-threaded runtime that serves gRPC.
    pub tasks: tokio::runtime::Handle,
}

impl AppState {
    /// Writes a snapshot of the current models (`startup`, `snapshot` or `shutdown`).
    pub fn snapshot(&self, kind: &str) {
        if let Some(s) = &self.snapshots {
            s.write(kind, &self.registry, &self.canaries);
        }
    }

    /// True when the request may pass: authorization off, or the right key presented.
    pub fn authorized(&self, req: &actix_web::HttpRequest, kind: crate::auth::KeyKind) -> bool {
        self.tokens.as_ref().is_none_or(|t| {
            let header = req
                .headers()
                .get(actix_web::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            t.check(kind, header)
        })
    }
}

/// The socket of an HTTP connection, to notice a client that left while its request waits.
#[derive(Clone, Copy)]
pub struct ConnFd(std::os::fd::RawFd);

/// Open connections of a listener, against `max_connections`: each connection holds a
/// [`ConnSlot`] (in its extensions) for as long as it lives.
#[derive(Clone)]
struct ConnCount {
    open: Arc<std::sync::atomic::AtomicUsize>,
    limit: usize,
}

/// One connection's place in its listener's count; `over` when it arrived past the limit
/// (its requests are refused with 503 and the connection closed).
struct ConnSlot {
    open: Arc<std::sync::atomic::AtomicUsize>,
    over: bool,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl ConnCount {
    fn new(limit: usize) -> Self {
        Self {
            open: Default::default(),
            limit,
        }
    }

    /// `on_connect`: counts the connection and notes its socket for disconnect checks.
    fn connected(&self, conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
        let now = self.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        ext.insert(ConnSlot {
            open: self.open.clone(),
            over: now > self.limit,
        });
        ConnFd::from_connection(conn, ext);
    }
}

impl ConnFd {
    fn from_connection(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
        use std::os::fd::AsRawFd;
        if let Some(sock) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            ext.insert(ConnFd(sock.as_raw_fd()));
        }
    }

    /// Resolves once the peer closed (or reset) the connection. A duplicate of the socket is
    /// registered with the runtime's poller: the hang-up wakes it; bytes of a pipelined
    /// request wake it too, and a peek tells them apart. Valid while the request that carries
    /// it is being handled: the connection, and so the descriptor, outlives it.
    pub async fn closed(self) {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: dup(2) of a descriptor the connection owns; the copy is owned here.
        let fd = unsafe { libc::dup(self.0) };
        if fd < 0 {
            return std::future::pending().await;
        }
        // SAFETY: `fd` is a fresh descriptor nobody else holds.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the descriptor, which stays open, and the same, until it
        // is dropped.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        };
        let Ok(watch) = registered else {
            return std::future::pending().await;
        };
        loop {
            let Ok(mut ready) = watch.readable().await else {
                return std::future::pending().await;
            };
            if ready.ready().is_read_closed() || self.peer_closed() {
                return;
            }
            ready.clear_ready();
        }
    }

    /// True once the peer closed (or reset) the connection.
    fn peer_closed(self) -> bool {
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a local buffer on a descriptor owned by the connection.
        let n = unsafe {
            libc::recv(
                self.0,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => true,
            n if n > 0 => false,
            _ => !matches!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN) | Some(libc::EINTR)
            ),
        }
    }
}

/// How long a request waits before its connection is watched for the client leaving.
const WATCH_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// Resolves when the client closes its connection (never for connections without a socket
/// of their own, such as TLS ones). actix notices a disconnect only when it writes, so the
/// socket's hang-up is awaited from the runtime's poller.
pub(crate) async fn client_gone(conn: Option<ConnFd>) -> crate::error::ServeError {
    let Some(conn) = conn else {
        return std::future::pending().await;
    };
    // Most answers come sooner: only a request still waiting is worth the watch's syscalls.
    tokio::time::sleep(WATCH_AFTER).await;
    conn.closed().await;
    crate::error::ServeError::ClientGone
}

/// The server-generated id of the current request (also the backend request id).
#[derive(Clone)]
pub struct RequestId(pub String);

/// Headers TorchServe puts on every response; `connection: close` from status 400 on.
fn standard_headers<B>(res: &mut ServiceResponse<B>, id: &str) {
    let status = res.status();
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(HeaderName::from_static("x-request-id"), v);
    }
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache; no-store, must-revalidate, private"),
    );
    headers.insert(
        EXPIRES,
        HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 UTC"),
    );
    if status.as_u16() >= 400 {
        res.response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
}

/// `cors_allowed_*`: TorchServe adds each configured header to every response that lacks it
/// (no preflight logic of its own: an `OPTIONS` request is routed like any other).
fn cors_headers<B>(res: &mut ServiceResponse<B>, cors: &[(&'static str, String)]) {
    let headers = res.headers_mut();
    for (name, value) in cors {
        let name = HeaderName::from_static(name);
        if !headers.contains_key(&name) {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
    }
}

/// What the access log says of a request: TorchServe's
/// `/<ip>:<port> "<METHOD> <uri> <HTTP/x.y>" <status> <ms>`.
struct AccessEntry {
    peer: Option<std::net::SocketAddr>,
    method: actix_web::http::Method,
    uri: actix_web::http::Uri,
    version: actix_web::http::Version,
    arrived: std::time::Instant,
}

impl AccessEntry {
    fn of(req: &actix_web::dev::ServiceRequest) -> Self {
        Self {
            peer: req.peer_addr(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            arrived: std::time::Instant::now(),
        }
    }

    fn log(&self, status: u16) {
        let peer = self
            .peer
            .map(|p| format!("/{p}"))
            .unwrap_or_else(|| "/local".into());
        tracing::info!(
            target: crate::logging::ACCESS_LOG,
            "{peer} \"{} {} {:?}\" {status} {}",
            self.method,
            self.uri,
            self.version,
            self.arrived.elapsed().as_millis()
        );
    }
}

macro_rules! app {
    ($state:expr, $route:path) => {
        App::new()
            .app_data($state.clone())
            .wrap_fn(|req, srv| {
                let id = uuid::Uuid::new_v4().to_string();
                req.extensions_mut().insert(RequestId(id.clone()));
                let state = req.app_data::<web::Data<AppState>>().cloned();
                let access = AccessEntry::of(&req);
                let over = req
                    .request()
                    .conn_data::<ConnSlot>()
                    .is_some_and(|slot| slot.over);
                let call = if over {
                    let limit = state.as_ref().map_or(0, |s| s.settings.max_connections);
                    Err(req.into_response(response::error(&error::ApiError::new(
                        503,
                        "ServiceUnavailableException",
                        format!("Too many connections (max_connections is {limit}); retry later"),
                    ))))
                } else {
                    Ok(srv.call(req))
                };
                // A request's answer logs its metric and access lines in one poll.
                crate::logging::lines_per_poll(async move {
                    let mut res = match call {
                        Err(refused) => refused,
                        Ok(fut) => fut.await?,
                    };
                    standard_headers(&mut res, &id);
                    let status = res.status().as_u16();
                    if let Some(state) = state {
                        cors_headers(&mut res, &state.settings.cors);
                        state.metrics.response(status);
                    }
                    access.log(status);
                    Ok(res)
                })
            })
            .default_service(web::to($route))
    };
}

/// Binds a listener to an address (`http://`, `https://`, `unix:`).
macro_rules! listen {
    ($server:expr, $key:expr, $addr:expr, $tls:expr) => {
        match $addr {
            Address::Http { host, port } => {
                tracing::info!("{}: http://{host}:{port}", $key);
                $server.bind((host.as_str(), *port))?
            }
            Address::Https { host, port } => {
                tracing::info!("{}: https://{host}:{port}", $key);
                $server.bind_rustls_0_23((host.as_str(), *port), tls_config($tls)?)?
            }
            Address::Unix(path) => {
                // A socket file left by an earlier run would make the bind fail.
                let _ = std::fs::remove_file(path);
                tracing::info!("{}: unix:{}", $key, path.display());
                $server.bind_uds(path)?
            }
        }
    };
}

/// TLS for `https://` listeners from PEM files (`certificate_file`, `private_key_file`), with
/// rustls' safe defaults (TLS 1.2 and 1.3).
fn tls_config(settings: &Settings) -> std::io::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    if settings.keystore.is_some() && settings.certificate_file.is_none() {
        return Err(invalid(
            "keystore: Java keystores are not supported; give private_key_file and certificate_file (PEM)".into(),
        ));
    }
    let (Some(cert), Some(key)) = (&settings.certificate_file, &settings.private_key_file) else {
        return Err(invalid(
            "https:// listeners need private_key_file and certificate_file (PEM) in config.properties".into(),
        ));
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("certificate_file {}: {e}", cert.display())))?;
    let key_path = key;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| invalid(format!("private_key_file {}: {e}", key_path.display())))?;
    if let Some(bits) = rsa_bits(&key).filter(|b| !(2048..=8192).contains(b)) {
        return Err(invalid(format!(
            "private_key_file {}: an RSA key of {bits} bits is refused as too weak: TLS here \
             signs with RSA keys of 2048 to 8192 bits, ECDSA P-256/P-384 or Ed25519 keys; make \
             a new pair, e.g. `openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out \
             certs.pem`",
            key_path.display()
        )));
    }
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| invalid(format!("certificate_file/private_key_file: {e}")))
}

/// The modulus size of an RSA private key (PKCS#1 or PKCS#8), to say why rustls' signer would
/// refuse it: its own error only says the key could not be parsed.
fn rsa_bits(key: &rustls_pki_types::PrivateKeyDer) -> Option<usize> {
    use pkcs1::der::Decode;
    use rustls_pki_types::PrivateKeyDer;
    let der = match key {
        PrivateKeyDer::Pkcs1(k) => k.secret_pkcs1_der(),
        PrivateKeyDer::Pkcs8(k) => {
            let info = pkcs8::PrivateKeyInfo::from_der(k.secret_pkcs8_der()).ok()?;
            if info.algorithm.oid != pkcs1::ALGORITHM_OID {
                return None;
            }
            info.private_key
        }
        _ => return None,
    };
    let modulus = pkcs1::RsaPrivateKey::from_der(der).ok()?.modulus;
    let bytes = modulus.as_bytes();
    Some(bytes.len() * 8 - bytes.first().map_or(0, |b| b.leading_zeros() as usize))
}

/// One listener serving inference, management and metrics, for equal inference and management
/// addresses (TorchServe's single-port mode, used by KServe).
async fn all_route(
    req: actix_web::HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::HttpResponse {
    let segs = input::segments(req.path());
    match segs.get(1).map(String::as_str) {
        Some("models" | "token" | "workflows") => management::route(req, payload, state).await,
        // `/v1/models/{m}` (readiness) is management's; `/v1/models/{m}:predict` inference's.
        Some("v1") if segs.len() == 4 && !segs[3].contains(':') => {
            management::route(req, payload, state).await
        }
        Some("metrics") if state.settings.enable_metrics_api => metrics_route(req, state).await,
        _ => inference::route(req, payload, state).await,
    }
}

/// Binds every listener and serves until all of them stop (SIGINT/SIGTERM).
pub async fn serve(state: web::Data<AppState>) -> std::io::Result<()> {
    let settings = state.settings.clone();
    let threads = settings.http_threads;
    // On SIGTERM/SIGINT the listeners stop accepting and in-flight requests get this long.
    let drain = settings.default_response_timeout.clamp(1, 120);
    let single_port = settings.inference_address == settings.management_address;

    let mut servers = Vec::new();
    if single_port {
        let s = state.clone();
        let count = ConnCount::new(settings.max_connections);
        let server = HttpServer::new(move || app!(s, all_route))
            .on_connect(move |c, ext| count.connected(c, ext))
            .workers(threads)
            .disable_signals()
            .shutdown_timeout(drain);
        servers.push(
            listen!(
                server,
                "Inference and management address",
                &settings.inference_address,
                &settings
            )
            .run(),
        );
    } else {
        let s = state.clone();
        let count = ConnCount::new(settings.max_connections);
        let inference = HttpServer::new(move || app!(s, inference::route))
            .on_connect(move |c, ext| count.connected(c, ext))
            .workers(threads)
            .disable_signals()
            .shutdown_timeout(drain);
        servers.push(
            listen!(
                inference,
                "Inference address",
                &settings.inference_address,
                &settings
            )
            .run(),
        );
        let s = state.clone();
        let count = ConnCount::new(settings.max_connections);
        let management = HttpServer::new(move || app!(s, management::route))
            .on_connect(move |c, ext| count.connected(c, ext))
            .workers(1)
            .disable_signals()
            .shutdown_timeout(drain);
        servers.push(
            listen!(
                management,
                "Management address",
                &settings.management_address,
                &settings
            )
            .run(),
        );
    }
    if settings.enable_metrics_api
        && !(single_port && settings.metrics_address == settings.inference_address)
    {
        let s = state.clone();
        let metrics = HttpServer::new(move || app!(s, metrics_route))
            .workers(1)
            .disable_signals();
        servers.push(
            listen!(
                metrics,
                "Metrics address",
                &settings.metrics_address,
                &settings
            )
            .run(),
        );
    }
    warn_if_exposed(&settings, state.tokens.is_some());
    let grpc_listeners = grpc::bind(&settings)?;
    let grpc_stop = Arc::new(tokio::sync::Notify::new());
    let grpc = state.tasks.spawn(grpc::serve(
        state.clone(),
        grpc_listeners,
        grpc_stop.clone(),
    ));
    println!("Model server started.");
    // One signal handler for all listeners: each stops gracefully and the process exits only
    // when every in-flight request has its answer (or the drain time ran out).
    let handles: Vec<_> = servers.iter().map(|s| s.handle()).collect();
    actix_web::rt::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        grpc_stop.notify_waiters();
        futures_util::future::join_all(handles.iter().map(|h| h.stop(true))).await;
    });
    futures_util::future::try_join_all(servers).await?;
    let _ = grpc.await;
    state.snapshot("shutdown");
    tracing::info!("stopped");
    Ok(())
}

/// A listener on every interface without token authorization serves anyone who can reach
/// the machine (TorchServe's CVE class of exposed management ports): say so loudly.
fn warn_if_exposed(settings: &Settings, tokens: bool) {
    if tokens {
        return;
    }
    let wildcard = |host: &str| matches!(host.trim_matches(['[', ']']), "0.0.0.0" | "::" | "");
    let mut exposed: Vec<String> = [
        ("inference_address", &settings.inference_address),
        ("management_address", &settings.management_address),
        ("metrics_address", &settings.metrics_address),
    ]
    .into_iter()
    .filter_map(|(key, addr)| match addr {
        Address::Http { host, .. } | Address::Https { host, .. } if wildcard(host) => {
            Some(key.to_string())
        }
        _ => None,
    })
    .collect();
    for (key, host) in [
        ("grpc_inference_address", &settings.grpc_inference_address),
        ("grpc_management_address", &settings.grpc_management_address),
    ] {
        if wildcard(host) {
            exposed.push(key.to_string());
        }
    }
    if !exposed.is_empty() {
        tracing::warn!(
            "SECURITY: {} listen on every network interface with token authorization disabled: \
             anyone who can reach this machine can run and manage models. Bind to 127.0.0.1 or \
             enable token authorization.",
            exposed.join(", ")
        );
    }
}

/// SIGTERM (`ferroserve --stop`, Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot listen for SIGTERM/SIGINT; falling back to Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `/metrics` answers the exposition `metrics_mode` allows; everything else is TorchServe's 404.
async fn metrics_route(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
) -> actix_web::HttpResponse {
    match input::segments(req.path()).as_slice() {
        [] if req.method() == actix_web::http::Method::OPTIONS => {
            response::json(200, &openapi::metrics())
        }
        [_, d] if d == "api-description" => response::json(200, &openapi::metrics()),
        // Any path under /metrics, any method; `name[]` (repeatable) selects families.
        [_, m, ..] if m == "metrics" => {
            let query: Vec<(String, String)> =
                serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
            let names: Vec<String> = query
                .into_iter()
                .filter(|(k, _)| k == "name[]")
                .map(|(_, v)| v)
                .collect();
            actix_web::HttpResponse::Ok()
                .content_type("text/plain; version=0.0.4; charset=utf-8")
                .body({
                    // Gauges read at scrape time.
                    for mv in state.registry.all() {
                        mv.metrics.set_queue_depth(mv.queue.pending());
                    }
                    state.metrics.render(&names)
                })
        }
        _ => response::error(&error::ApiError::resource_not_found()),
    }
}
