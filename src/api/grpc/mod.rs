//! TorchServe's gRPC APIs: inference on 7070 (`Ping`, `Predictions`, `StreamPredictions`) and
//! management on 7071 (the six calls), with TorchServe's protos, its metadata authorization
//! and its gRPC codes. Inference goes through the service as REST's does; management calls
//! share the operations REST runs, so their replies carry the text and JSON REST answers.

use std::pin::Pin;
use std::sync::Arc;

use actix_web::web;
use futures_util::Stream;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::management::{self, Answer};
use super::AppState;
use crate::auth::KeyKind;
use crate::error::ServeError;
use crate::handler::{Param, RequestInput};
use crate::serve::{Origin, Target};

pub mod oip;

/// Generated code, nested as the proto packages (it refers to `google.rpc` relatively).
#[allow(clippy::all)]
pub mod pb {
    pub mod org {
        pub mod pytorch {
            pub mod serve {
                pub mod grpc {
                    pub mod inference {
                        tonic::include_proto!("org.pytorch.serve.grpc.inference");
                    }
                    pub mod management {
                        tonic::include_proto!("org.pytorch.serve.grpc.management");
                    }
                    pub mod openinference {
                        tonic::include_proto!("org.pytorch.serve.grpc.openinference");
                    }
                }
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
    pub use org::pytorch::serve::grpc::{inference, management, openinference};
}

use pb::inference::inference_ap_is_service_server::{
    InferenceApIsService, InferenceApIsServiceServer,
};
use pb::inference::{PredictionResponse, PredictionsRequest, TorchServeHealthResponse};
use pb::management::management_ap_is_service_server::{
    ManagementApIsService, ManagementApIsServiceServer,
};
use pb::management::{
    DescribeModelRequest, ListModelsRequest, ManagementResponse, RegisterModelRequest,
    ScaleWorkerRequest, SetDefaultRequest, UnregisterModelRequest,
};

/// TorchServe's HTTP status → gRPC code table (`GRPCUtils`), for the status a handler's
/// reply carries.
fn code_of_status(status: u16) -> tonic::Code {
    use tonic::Code;
    match status {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        // TorchServe's gRPC service answers a conflict (a version already registered) UNKNOWN.
        409 => Code::Unknown,
        413 | 429 => Code::ResourceExhausted,
        416 => Code::OutOfRange,
        499 => Code::Cancelled,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        402..=499 => Code::FailedPrecondition,
        _ => Code::Internal,
    }
}

/// The gRPC code of every [`ServeError`], as TorchServe's services answer them.
pub fn status(e: &ServeError) -> Status {
    use crate::error::WorkflowFault;
    use tonic::Code;
    use ServeError as E;
    let code = match e {
        E::ModelNotFound(_)
        | E::VersionNotFound { .. }
        | E::DefaultVersionNotFound { .. }
        | E::ArchiveNotFound(_)
        | E::NoSplit(_) => Code::NotFound,
        E::DownloadFailed(_)
        | E::NotCanary { .. }
        | E::AmbiguousCanary(_)
        | E::BadInput(_)
        | E::InvalidModel(_)
        | E::ClientGone => Code::InvalidArgument,
        E::DefaultVersionInUse(_) => Code::PermissionDenied,
        E::Conflict(_) => Code::Unknown,
        E::NoWorker { .. }
        | E::QueueFull { .. }
        | E::NoDescribeWorker(_)
        | E::ClientTimeout { .. }
        | E::PredictionFailed(_) => Code::Unavailable,
        E::Backend { status, .. } => code_of_status(*status),
        E::Workflow(_, WorkflowFault::NotFound) => Code::NotFound,
        E::Workflow(_, WorkflowFault::Dag) => Code::InvalidArgument,
        E::Workflow(_, WorkflowFault::Conflict) => Code::Unknown,
        E::FileExists(_)
        | E::WorkersNotStarted(_)
        | E::WorkerDied
        | E::Timeout
        | E::Internal(_)
        | E::Workflow(..) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// The metadata `authorization: Bearer <key>` check; failure is `PERMISSION_DENIED`.
fn authorize<T>(state: &AppState, req: &Request<T>, kind: KeyKind) -> Result<(), Status> {
    let Some(tokens) = &state.tokens else {
        return Ok(());
    };
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if tokens.check(kind, header) {
        Ok(())
    } else {
        Err(Status::permission_denied(ApiError::denied().message))
    }
}

/// A management answer as a reply's `msg`: TorchServe's gRPC service sends a status reply's
/// text alone (`Model "m" unregistered`), and describe and list replies as the REST JSON.
fn message(answer: Result<Answer, ServeError>) -> Result<Response<ManagementResponse>, Status> {
    let msg = answer.map_err(|e| status(&e))?.into_message();
    Ok(Response::new(ManagementResponse { msg }))
}

/// Whether a request's input map sets `key` to `true` (TorchServe's sequence flags).
fn flag(r: &PredictionsRequest, key: &str) -> bool {
    r.input.get(key).is_some_and(|v| {
        String::from_utf8_lossy(v)
            .trim()
            .eq_ignore_ascii_case("true")
    })
}

pub(super) fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

pub struct Inference {
    state: web::Data<AppState>,
}

type PredictionStream = Pin<Box<dyn Stream<Item = Result<PredictionResponse, Status>> + Send>>;

impl Inference {
    /// One prediction; a `sequence_id` names the stateful sequence it belongs to (the
    /// header a REST client sends; a stateful model opens a new sequence without it).
    async fn run(&self, r: PredictionsRequest) -> Result<crate::handler::Reply, Status> {
        if r.model_name.is_empty() {
            return Err(Status::internal("Parameter model_name is required."));
        }
        let headers = &self.state.settings.sequence_headers;
        let mut extra = Vec::new();
        if let Some(id) = r.sequence_id.as_deref().and_then(nonempty) {
            extra.push((headers.id.clone(), id.to_string()));
        }
        // A sequence's last request says so in its input map, as TorchServe's clients do.
        if flag(&r, &headers.end) {
            extra.push((headers.end.clone(), "true".into()));
        }
        // The input map's entries become parameters named by their keys, without a content
        // type (so never decoded as JSON), as in TorchServe.
        let params = r
            .input
            .into_iter()
            .map(|(name, value)| Param {
                name,
                content_type: None,
                value: value.into(),
            })
            .collect();
        infer(
            &self.state,
            &r.model_name,
            nonempty(&r.model_version),
            extra,
            params,
        )
        .await
    }

    /// A `StreamPredictions2` message's answer, errors in-band as TorchServe sends them (its
    /// replies carry no `sequence_id`).
    async fn sequence_step(&self, r: PredictionsRequest) -> PredictionResponse {
        let starts = flag(&r, &self.state.settings.sequence_headers.start);
        let answer = if r.sequence_id.as_deref().unwrap_or("").is_empty() && !starts {
            Err(Status::internal("Parameter sequenceId is required."))
        } else {
            match self.run(r).await {
                Ok(reply) => reply
                    .collect(self.state.settings.max_response_size)
                    .await
                    .map_err(Status::internal),
                Err(e) => Err(e),
            }
        };
        match answer {
            Ok(body) => PredictionResponse {
                prediction: body.to_vec(),
                sequence_id: None,
                status: None,
            },
            Err(e) => PredictionResponse {
                prediction: Vec::new(),
                sequence_id: None,
                status: Some(pb::google::rpc::Status {
                    code: e.code() as i32,
                    message: e.message().to_string(),
                    details: Vec::new(),
                }),
            },
        }
    }
}

/// Runs one gRPC inference through the service, as REST's `/predictions/{m}[/{v}]` does. A
/// handler's error status becomes the call's.
pub(super) async fn infer(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    headers: Vec<(String, String)>,
    params: Vec<Param>,
) -> Result<crate::handler::Reply, Status> {
    let target = Target {
        model,
        version,
        routing_key: None,
    };
    let call = state
        .service
        .route(target, Origin::Grpc)
        // TorchServe reports an unknown model on these calls as INTERNAL.
        .map_err(|e| Status::internal(e.to_string()))?;
    let input = RequestInput {
        request_id: uuid::Uuid::new_v4().to_string(),
        headers,
        params,
    };
    let reply = call
        .run(input, crate::serve::never())
        .await
        .map_err(|e| status(&e))?;
    if reply.status >= 400 {
        return Err(Status::new(
            code_of_status(reply.status),
            String::from_utf8_lossy(&reply.body).into_owned(),
        ));
    }
    Ok(reply)
}

#[tonic::async_trait]
impl InferenceApIsService for Inference {
    async fn ping(&self, req: Request<()>) -> Result<Response<TorchServeHealthResponse>, Status> {
        authorize(&self.state, &req, KeyKind::Inference)?;
        let healthy = self
            .state
            .registry
            .defaults()
            .iter()
            .all(|m| m.is_healthy());
        let status = if healthy { "Healthy" } else { "Unhealthy" };
        let health = serde_json::to_string_pretty(&serde_json::json!({ "status": status }))
            .unwrap_or_default();
        Ok(Response::new(TorchServeHealthResponse { health }))
    }

    async fn predictions(
        &self,
        req: Request<PredictionsRequest>,
    ) -> Result<Response<PredictionResponse>, Status> {
        authorize(&self.state, &req, KeyKind::Inference)?;
        let reply = self.run(req.into_inner()).await?;
        // A streamed answer is returned whole by the unary call.
        let body = reply
            .collect(self.state.settings.max_response_size)
            .await
            .map_err(Status::internal)?;
        Ok(Response::new(PredictionResponse {
            prediction: body.to_vec(),
            sequence_id: None,
            status: None,
        }))
    }

    type StreamPredictionsStream = PredictionStream;

    async fn stream_predictions(
        &self,
        req: Request<PredictionsRequest>,
    ) -> Result<Response<Self::StreamPredictionsStream>, Status> {
        authorize(&self.state, &req, KeyKind::Inference)?;
        let reply = self.run(req.into_inner()).await?;
        let first = futures_util::stream::once(std::future::ready(Ok(PredictionResponse {
            prediction: reply.body.to_vec(),
            sequence_id: None,
            status: None,
        })));
        let rest = futures_util::stream::unfold(reply.stream, |rx| async move {
            let mut rx = rx?;
            let chunk = rx.recv().await?;
            let item = chunk
                .map(|b| PredictionResponse {
                    prediction: b.to_vec(),
                    sequence_id: None,
                    status: None,
                })
                .map_err(|e| Status::internal(e.to_string()));
            Some((item, Some(rx)))
        });
        use futures_util::StreamExt;
        Ok(Response::new(Box::pin(first.chain(rest))))
    }

    type StreamPredictions2Stream = PredictionStream;

    /// A stateful sequence over one stream: each message is answered in order, errors
    /// in-band (`status`) so the sequence goes on, as in TorchServe.
    async fn stream_predictions2(
        &self,
        req: Request<tonic::Streaming<PredictionsRequest>>,
    ) -> Result<Response<Self::StreamPredictions2Stream>, Status> {
        authorize(&self.state, &req, KeyKind::Inference)?;
        let mut inbound = req.into_inner();
        let this = Inference {
            state: self.state.clone(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(message) = inbound.next().await {
                let Ok(r) = message else { break };
                let answer = this.sequence_step(r).await;
                if tx.send(Ok(answer)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

pub struct Management {
    state: web::Data<AppState>,
}

impl Management {
    fn check<T>(&self, req: &Request<T>, model_api: bool) -> Result<(), Status> {
        authorize(&self.state, req, KeyKind::Management)?;
        if model_api && !self.state.settings.enable_model_api {
            return Err(Status::permission_denied("Model API disabled"));
        }
        Ok(())
    }
}

/// A positive proto int, or "use the default".
fn positive(v: i32) -> Option<String> {
    (v > 0).then(|| v.to_string())
}

#[tonic::async_trait]
impl ManagementApIsService for Management {
    async fn describe_model(
        &self,
        req: Request<DescribeModelRequest>,
    ) -> Result<Response<ManagementResponse>, Status> {
        self.check(&req, false)?;
        let r = req.into_inner();
        message(
            management::describe(
                &self.state,
                &r.model_name,
                nonempty(&r.model_version),
                r.customized,
                Vec::new(),
            )
            .await,
        )
    }

    async fn list_models(
        &self,
        req: Request<ListModelsRequest>,
    ) -> Result<Response<ManagementResponse>, Status> {
        self.check(&req, false)?;
        let r = req.into_inner();
        // The proto's values as they are, 0 included: TorchServe pages a ListModels call with
        // the default request as `?limit=0` (no models, nextPageToken "0").
        let q = [
            ("limit".to_string(), r.limit.to_string()),
            ("next_page_token".to_string(), r.next_page_token.to_string()),
        ];
        message(Ok(management::list(&self.state, &q)))
    }

    async fn register_model(
        &self,
        req: Request<RegisterModelRequest>,
    ) -> Result<Response<ManagementResponse>, Status> {
        self.check(&req, true)?;
        let r = req.into_inner();
        let mut p = serde_json::Map::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                p.insert(k.to_string(), serde_json::Value::String(v));
            }
        };
        put("url", nonempty(&r.url).map(str::to_string));
        put("model_name", nonempty(&r.model_name).map(str::to_string));
        put("handler", nonempty(&r.handler).map(str::to_string));
        put("runtime", nonempty(&r.runtime).map(str::to_string));
        put("batch_size", positive(r.batch_size));
        put("max_batch_delay", positive(r.max_batch_delay));
        put("initial_workers", positive(r.initial_workers));
        put("response_timeout", positive(r.response_timeout));
        put("startup_timeout", positive(r.startup_timeout));
        // gRPC registration is asynchronous unless asked, as in TorchServe.
        put("synchronous", Some(r.synchronous.to_string()));
        message(management::register(&self.state, super::input::Params(p)).await)
    }

    async fn scale_worker(
        &self,
        req: Request<ScaleWorkerRequest>,
    ) -> Result<Response<ManagementResponse>, Status> {
        self.check(&req, false)?;
        let r = req.into_inner();
        let q: Vec<(String, String)> = [
            ("min_worker", positive(r.min_worker)),
            ("max_worker", positive(r.max_worker)),
            ("synchronous", Some(r.synchronous.to_string())),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect();
        message(management::scale(&self.state, &r.model_name, nonempty(&r.model_version), &q).await)
    }

    async fn set_default(
        &self,
        req: Request<SetDefaultRequest>,
    ) -> Result<Response<ManagementResponse>, Status> {
        self.check(&req, false)?;
        let r = req.into_inner();
        message(management::set_default(
            &self.state,
            &r.model_name,
            &r.model_version,
        ))
    }

    async fn unregister_model(
        &self,
        req: Request<UnregisterModelRequest>,
    ) -> Result<Response<ManagementResponse>, Status> {
        self.check(&req, true)?;
        let r = req.into_inner();
        message(management::unregister(
            &self.state,
            &r.model_name,
            nonempty(&r.model_version),
        ))
    }
}

/// Binds the two gRPC listeners (before the server says it started, so a taken port stops
/// start-up like any listener).
pub fn bind(settings: &crate::config::Settings) -> std::io::Result<[std::net::TcpListener; 2]> {
    let bind = |host: &str, port: u16| {
        let l = std::net::TcpListener::bind((host, port)).map_err(|e| {
            std::io::Error::new(e.kind(), format!("gRPC address {host}:{port}: {e}"))
        })?;
        l.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(l)
    };
    Ok([
        bind(
            &settings.grpc_inference_address,
            settings.grpc_inference_port,
        )?,
        bind(
            &settings.grpc_management_address,
            settings.grpc_management_port,
        )?,
    ])
}

/// Serves both gRPC listeners until `stop` is notified.
pub async fn serve(
    state: web::Data<AppState>,
    [inference_listener, management_listener]: [std::net::TcpListener; 2],
    stop: Arc<tokio::sync::Notify>,
) {
    let limit = state.settings.max_request_size;
    let [inference_age, management_age] = state.settings.grpc_connection_age;
    let incoming = |l: std::net::TcpListener| {
        let addr = l.local_addr().ok();
        tokio::net::TcpListener::from_std(l)
            .map(|l| (addr, tokio_stream::wrappers::TcpListenerStream::new(l)))
    };
    let (Ok((ia, inference_in)), Ok((ma, management_in))) =
        (incoming(inference_listener), incoming(management_listener))
    else {
        tracing::error!("gRPC listeners could not be registered with the runtime");
        return;
    };
    tracing::info!("gRPC inference address: {ia:?}; management address: {ma:?}");
    let (state_oip, oip_state) = (state.settings.open_inference_protocol, state.clone());
    let inference = InferenceApIsServiceServer::new(Inference {
        state: state.clone(),
    })
    .max_decoding_message_size(limit);
    let management =
        ManagementApIsServiceServer::new(Management { state }).max_decoding_message_size(limit);
    let open_inference = state_oip.then(|| oip::server(oip_state.clone(), limit));
    let (s1, s2) = (stop.clone(), stop);
    // Calls in flight per connection (hyper's own default, which tonic leaves unset).
    const STREAMS: Option<u32> = Some(200);
    let aged = |(age, grace): (Option<std::time::Duration>, Option<std::time::Duration>)| {
        let mut builder = tonic::transport::Server::builder().max_concurrent_streams(STREAMS);
        if let Some(age) = age {
            builder = builder.max_connection_age(age);
        }
        if let Some(grace) = grace {
            builder = builder.max_connection_age_grace(grace);
        }
        builder
    };
    let a = aged(inference_age)
        .add_service(inference)
        .add_optional_service(open_inference)
        .serve_with_incoming_shutdown(inference_in, async move { s1.notified().await });
    let b = aged(management_age)
        .add_service(management)
        .serve_with_incoming_shutdown(management_in, async move { s2.notified().await });
    let (a, b) = futures_util::future::join(a, b).await;
    if let Err(e) = a.and(b) {
        tracing::error!("gRPC: {e}");
    }
}
