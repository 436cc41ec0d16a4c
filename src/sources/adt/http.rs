//! `POST /hl7/v2`: one ER7 message over HTTP, answered with its ACK(s), for
//! senders that cannot speak MLLP. The same intake as MLLP.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::intake::{AdtIntake, Via};
use crate::config::OrgKind;
use crate::edge::{ApiError, ClientCert};
use crate::state::Core;

const HL7_MEDIA: &str = "x-application/hl7-v2+er7";

/// `POST /hl7/v2`: one ER7 message; the reply body is the ACK (in enhanced
/// mode, the commit ACK and then the application ACK, each a whole message,
/// separated by CR LF). Every HL7 answer — an oversize body's `AR` included —
/// is `200` with the ACK as the body: a sender's engine reads the ACK, and a
/// 4xx would look like a transport failure to retry.
pub async fn hl7_v2(
    State(state): State<Core>,
    State(intake): State<Arc<AdtIntake>>,
    cert: ClientCert,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = state.authenticate(&headers, &cert, &[OrgKind::AdtSource])?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !(media == HL7_MEDIA || media == "application/hl7-v2" || media == "text/plain") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be {HL7_MEDIA}"
        )));
    }
    let max = state.cfg.server.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let acks = match read_limited(body, max, declared).await? {
        Ok(bytes) => {
            intake
                .handle(
                    &bytes,
                    &Via::Http {
                        org_id: caller.org_id,
                    },
                )
                .await
        }
        Err(Oversize { head, len }) => vec![intake.oversize(&head, len, max)],
    };
    let body = acks.join("\r\n");
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(HL7_MEDIA));
    Ok(resp)
}

/// A body over the limit: its first bytes (for MSA-2) and its size as far
/// as known (the declared length, or what was read before stopping).
struct Oversize {
    head: Vec<u8>,
    len: usize,
}

/// How much of an oversize body is kept to read its MSH.
const OVERSIZE_HEAD: usize = 8 * 1024;

/// Read a request body of at most `max` bytes. Above that keep only its
/// head, and read (and drop) the rest up to a bound — so the client, still
/// sending, sees the answer rather than a reset — then stop. A declared
/// Content-Length above `max` is oversize whatever arrives.
async fn read_limited(
    body: Body,
    max: usize,
    declared: Option<usize>,
) -> Result<Result<Bytes, Oversize>, ApiError> {
    use futures_util::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut over = declared.is_some_and(|d| d > max);
    let drain_limit = max.saturating_mul(4).max(1 << 20);
    let mut buf: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0).min(max));
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|_| ApiError::Internal("could not read the request body".into()))?;
        seen = seen.saturating_add(chunk.len());
        if !over && seen > max {
            over = true;
        }
        if over {
            let room = OVERSIZE_HEAD.saturating_sub(buf.len()).min(chunk.len());
            buf.extend_from_slice(chunk.get(..room).unwrap_or(&[]));
            if seen > drain_limit {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if over {
        buf.truncate(OVERSIZE_HEAD);
        return Ok(Err(Oversize {
            head: buf,
            len: declared.unwrap_or(0).max(seen),
        }));
    }
    Ok(Ok(Bytes::from(buf)))
}
