//! Talking to a running agent over its unix socket (HTTP/1.1 with hyper): what the CLI and the CNI
//! plugin use.

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent could not be reached (not running, wrong socket, no permission).
    #[error("cannot reach the agent at {socket}: {message} (is flowgated running? --socket)")]
    Unreachable {
        /// The socket.
        socket: String,
        /// Why.
        message: String,
    },
    /// The agent answered with an error status; `body` is its JSON answer (or the text as a string).
    #[error("agent answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The answer.
        body: Value,
    },
    /// Anything else on the way (a broken connection, invalid JSON).
    #[error("agent request: {0}")]
    Protocol(String),
}

/// How long one request may take before the client gives up (an agent that hangs must not hang its
/// callers: a runtime's CNI call, a person's `flowgate status`).
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Sends one request to the agent and returns the JSON answer.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| ClientError::Protocol(format!("runtime: {e}")))?;
    rt.block_on(async {
        tokio::time::timeout(TIMEOUT, send(socket, method, path, body))
            .await
            .unwrap_or_else(|_| Err(ClientError::Protocol(format!("no answer within {} s", TIMEOUT.as_secs()))))
    })
}

async fn send(socket: &Path, method: &str, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| ClientError::Unreachable { socket: socket.display().to_string(), message: e.to_string() })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Protocol(format!("handshake: {e}")))?;
    tokio::spawn(conn);
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "flowgate")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| ClientError::Protocol(format!("request: {e}")))?;
    let resp = sender.send_request(req).await.map_err(|e| ClientError::Protocol(e.to_string()))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| ClientError::Protocol(e.to_string()))?.to_bytes();
    if !status.is_success() {
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        return Err(ClientError::Status { status: status.as_u16(), body });
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(format!("invalid JSON in the answer: {e}")))
}
