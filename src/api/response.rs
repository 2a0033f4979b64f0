//! Building responses the way TorchServe writes them.

use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use futures_util::StreamExt;
use serde::Serialize;

use super::error::ApiError;
use crate::handler::Reply;

/// Gson-style pretty JSON with a trailing newline, `content-type: application/json`.
pub fn json<T: Serialize>(status: u16, value: &T) -> HttpResponse {
    let mut body = serde_json::to_string_pretty(value).expect("response serializes");
    body.push('\n');
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
        .content_type("application/json")
        .body(body)
}

pub fn error(err: &ApiError) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .content_type("application/json")
        .body(err.body())
}

/// A handler's reply, relayed as TorchServe relays backend replies: the status line has an
/// empty reason phrase and there is no content type unless the handler chose one.
pub fn reply(reply: Reply) -> HttpResponse {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let mut res = match reply.stream {
        // A streamed answer goes out chunked: the first part, then each one as it comes.
        Some(rest) => {
            let first = futures_util::stream::once(std::future::ready(Ok(reply.body)));
            let rest = futures_util::stream::unfold(rest, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            });
            HttpResponse::build(status).streaming(first.chain(rest))
        }
        None => HttpResponse::with_body(status, reply.body).map_into_boxed_body(),
    };
    res.head_mut().reason = Some("");
    let headers = res.headers_mut();
    if let Some(ct) = reply
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        headers.insert(CONTENT_TYPE, ct);
    }
    for (name, value) in reply.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(n, v);
        }
    }
    res
}

/// `{"status": "..."}` bodies (ping, register, scale...).
#[derive(Serialize)]
pub struct Status<'a> {
    pub status: &'a str,
}
