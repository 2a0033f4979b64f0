//! The HTTP listeners: inference (8080), management (8081) and metrics (8082).
//!
//! Routing follows TorchServe's segment rules (any method runs inference, trailing slashes
//! ignored), so every listener has a single default service that dispatches on the path.

pub mod inference;
pub mod input;
pub mod management;
pub mod response;

use std::sync::Arc;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, CACHE_CONTROL, EXPIRES, PRAGMA};
use actix_web::http::ConnectionType;
use actix_web::{web, App, HttpMessage, HttpServer};

use crate::config::Settings;
use crate::registry::Registry;

/// What every request handler can reach.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub registry: Arc<Registry>,
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

macro_rules! app {
    ($state:expr, $route:path) => {
        App::new()
            .app_data($state.clone())
            .wrap_fn(|req, srv| {
                let id = uuid::Uuid::new_v4().to_string();
                req.extensions_mut().insert(RequestId(id.clone()));
                let fut = srv.call(req);
                async move {
                    let mut res = fut.await?;
                    standard_headers(&mut res, &id);
                    Ok(res)
                }
            })
            .default_service(web::to($route))
    };
}

/// Binds every listener and serves until all of them stop (SIGINT/SIGTERM).
pub async fn serve(state: AppState) -> std::io::Result<()> {
    let settings = state.settings.clone();
    let state = web::Data::new(state);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let bind = |key: &str, addr: &crate::config::Address| {
        addr.http_bind(key)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
    };
    let (ihost, iport) = bind("inference_address", &settings.inference_address)?;
    let (mhost, mport) = bind("management_address", &settings.management_address)?;

    let s = state.clone();
    // On SIGTERM/SIGINT the listeners stop accepting and in-flight requests get this long.
    let drain = settings.default_response_timeout.clamp(1, 120);
    let inference = HttpServer::new(move || app!(s, inference::route))
        .workers(cores)
        .shutdown_timeout(drain)
        .bind((ihost.as_str(), iport))?;
    let s = state.clone();
    let management = HttpServer::new(move || app!(s, management::route))
        .workers(1)
        .shutdown_timeout(drain)
        .bind((mhost.as_str(), mport))?;
    tracing::info!("Inference address: {}", settings_addr(&ihost, iport));
    tracing::info!("Management address: {}", settings_addr(&mhost, mport));

    let mut servers = vec![inference.run(), management.run()];
    if settings.enable_metrics_api {
        let (xhost, xport) = bind("metrics_address", &settings.metrics_address)?;
        let s = state.clone();
        servers.push(
            HttpServer::new(move || app!(s, metrics_route))
                .workers(1)
                .bind((xhost.as_str(), xport))?
                .run(),
        );
        tracing::info!("Metrics address: {}", settings_addr(&xhost, xport));
    }
    println!("Model server started.");
    futures_util::future::try_join_all(servers).await?;
    Ok(())
}

fn settings_addr(host: &str, port: u16) -> String {
    format!("http://{host}:{port}")
}

/// `/metrics` answers an empty exposition for now; everything else is TorchServe's 404.
async fn metrics_route(req: actix_web::HttpRequest) -> actix_web::HttpResponse {
    match input::segments(req.path()).as_slice() {
        [_, m] if m == "metrics" => actix_web::HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .finish(),
        _ => response::error(&crate::error::ApiError::resource_not_found()),
    }
}
