//! Turning an HTTP request into the handler's input, as TorchServe's frontend does: the body
//! is bounded by `max_request_size`; forms and multipart bodies become one parameter per
//! field; anything else is one `body` parameter carrying the request's mime type.

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{web, HttpMessage, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::error::ApiError;
use crate::config::Settings;
use crate::handler::{Param, RequestInput};

/// Reads the whole body, refusing it as soon as it is known to exceed `max_request_size`, and
/// giving up on a client that sends nothing for `body_idle_timeout_sec` (a slow-body attack
/// holds a connection and a buffer otherwise; the HTTP parser bounds only the time to the
/// headers).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    settings: &Settings,
) -> Result<Bytes, ApiError> {
    let (limit, idle) = (settings.max_request_size, settings.body_idle_timeout());
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
    loop {
        let next = tokio::time::timeout(idle, payload.next())
            .await
            .map_err(|_| {
                ApiError::new(
                    408,
                    "RequestTimeoutException",
                    format!(
                        "the request body stalled for more than {} s",
                        idle.as_secs()
                    ),
                )
            })?;
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("Invalid HTTP message. {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The request's headers as (name, value) text pairs, as handlers receive them.
pub fn header_list(req: &HttpRequest) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Reads the body and builds the handler input, under the request's id.
pub async fn read_request(
    req: &HttpRequest,
    payload: web::Payload,
    settings: &Settings,
) -> Result<RequestInput, ApiError> {
    let body = read_body(req, payload, settings).await?;
    let request_id = req
        .extensions()
        .get::<super::RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    request_input(req, request_id, body).await
}

/// Builds the handler input from headers and body.
pub async fn request_input(
    req: &HttpRequest,
    request_id: String,
    body: Bytes,
) -> Result<RequestInput, ApiError> {
    let headers = header_list(req);
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let mime = content_type
        .as_deref()
        .map(|ct| ct.split(';').next().unwrap_or("").to_string());
    let params = match mime.as_deref() {
        Some(m) if m.trim().eq_ignore_ascii_case("multipart/form-data") => {
            multipart(req, body).await?
        }
        Some(m)
            if m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded") =>
        {
            url_encoded(&body)?
        }
        _ => vec![Param {
            name: "body".into(),
            content_type: mime,
            value: body,
        }],
    };
    Ok(RequestInput {
        request_id,
        headers,
        params,
    })
}

/// `a=1&b=2`; parts without `=` carry no parameter (so `curl -d hello` gives none).
pub fn url_encoded(body: &[u8]) -> Result<Vec<Param>, ApiError> {
    let mut params = Vec::new();
    for part in body.split(|&b| b == b'&') {
        if !part.contains(&b'=') {
            continue;
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(part)
            .map_err(|e| ApiError::bad_request(format!("invalid form body: {e}")))?;
        params.extend(pairs.into_iter().map(|(name, value)| Param {
            name,
            content_type: None,
            value: Bytes::from(value),
        }));
    }
    Ok(params)
}

/// File parts carry their content type (`application/octet-stream` when absent); plain
/// fields carry none.
async fn multipart(req: &HttpRequest, body: Bytes) -> Result<Vec<Param>, ApiError> {
    let stream =
        futures_util::stream::once(async move { Ok::<_, actix_web::error::PayloadError>(body) });
    let mut form = actix_multipart::Multipart::new(req.headers(), stream);
    let mut params = Vec::new();
    while let Some(field) = form.next().await {
        let mut field =
            field.map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?;
        let (name, is_file) = match field.content_disposition() {
            Some(cd) => (
                cd.get_name().unwrap_or_default().to_string(),
                cd.get_filename().is_some(),
            ),
            None => (String::new(), false),
        };
        let content_type = is_file.then(|| {
            field
                .content_type()
                .map(|m| m.essence_str().to_string())
                .unwrap_or_else(|| "application/octet-stream".into())
        });
        let mut value = BytesMut::new();
        while let Some(chunk) = field.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?;
            value.extend_from_slice(&chunk);
        }
        params.push(Param {
            name,
            content_type,
            value: value.freeze(),
        });
    }
    Ok(params)
}

/// TorchServe's path split: percent-decoded, the leading empty segment kept, trailing empty
/// segments dropped, `/` alone giving no segments.
pub fn segments(path: &str) -> Vec<String> {
    let mut segs: Vec<String> = path
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    while segs.last().is_some_and(|s| s.is_empty()) {
        segs.pop();
    }
    segs
}

pub fn query(req: &HttpRequest) -> Vec<(String, String)> {
    serde_urlencoded::from_str(req.query_string()).unwrap_or_default()
}

/// First value of a query parameter; unparseable values fall back to the default, as in
/// TorchServe.
pub fn param<T: std::str::FromStr>(q: &[(String, String)], key: &str) -> Option<T> {
    q.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// Registration parameters, from the query string or a JSON object body (same keys).
pub struct Params(pub serde_json::Map<String, serde_json::Value>);

impl Params {
    pub async fn read(
        req: &HttpRequest,
        payload: web::Payload,
        settings: &crate::config::Settings,
    ) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.split(';').next().unwrap_or("").trim() == "application/json");
        if json {
            let body = read_body(req, payload, settings).await?;
            if !body.is_empty() {
                return match serde_json::from_slice(&body) {
                    Ok(serde_json::Value::Object(map)) => Ok(Params(map)),
                    _ => Err(ApiError::bad_request(
                        "the request body is not a JSON object",
                    )),
                };
            }
        }
        Ok(Params(
            query(req)
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
        ))
    }

    pub fn string(&self, key: &str) -> Option<String> {
        match self.0.get(key)? {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::String(_) | serde_json::Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// Numbers given as numbers or strings; anything unparseable counts as absent.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.0.get(key)? {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    pub fn positive(&self, key: &str) -> Option<u64> {
        self.int(key).filter(|&v| v >= 0).map(|v| v as u64)
    }

    pub fn boolean(&self, key: &str) -> Option<bool> {
        match self.0.get(key)? {
            serde_json::Value::Bool(b) => Some(*b),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// TorchServe's paging of a list of `len` items: `limit` (0–100, else 100) from
/// `next_page_token`, and the token of the next page, given whenever the page ends at or
/// before the last item.
pub struct Page {
    pub offset: usize,
    pub limit: usize,
    pub next_page_token: Option<String>,
}

impl Page {
    pub fn of(q: &[(String, String)], len: usize) -> Self {
        let limit = match param::<i64>(q, "limit").unwrap_or(100) {
            l if !(0..=100).contains(&l) => 100,
            l => l as usize,
        };
        let offset = param::<i64>(q, "next_page_token").unwrap_or(0).max(0) as usize;
        let next_page_token = (offset + limit <= len).then(|| (offset + limit).to_string());
        Page {
            offset,
            limit,
            next_page_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_like_java_split() {
        assert!(segments("/").is_empty());
        assert_eq!(segments("/ping"), vec!["", "ping"]);
        assert_eq!(segments("/predictions/m/"), vec!["", "predictions", "m"]);
        assert_eq!(
            segments("/predictions//m"),
            vec!["", "predictions", "", "m"]
        );
        assert_eq!(
            segments("/predictions/a%20b"),
            vec!["", "predictions", "a b"]
        );
    }

    #[test]
    fn url_encoded_forms() {
        assert!(url_encoded(b"hello").unwrap().is_empty());
        let p = url_encoded(b"data=hello&x=1+2").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].value, Bytes::from("1 2"));
        assert!(p[0].content_type.is_none());
    }
}
