//! Talking to a running agent over its unix socket (HTTP/1.1 with hyper).

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Sends one request to the agent and returns the JSON answer.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            format!("cannot reach the agent at {}: {e} (is flowgated running? --socket)", socket.display())
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("agent handshake: {e}"))?;
        tokio::spawn(conn);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "flowgate")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender.send_request(req).await.map_err(|e| format!("agent request: {e}"))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| format!("agent response: {e}"))?.to_bytes();
        if !status.is_success() {
            return Err(format!("agent answered {status}: {}", String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| format!("agent answered with invalid JSON: {e}"))
    })
}
