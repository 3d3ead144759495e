//! The stdio face: the gateway as the MCP server an agent launches (`warden mcp`).
//!
//! One line, one JSON-RPC frame. Requests are handled concurrently, so a long call neither
//! blocks a cancellation nor the agent's answer to a server→client request.

use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::jsonrpc::{self, MAX_FRAME};
use crate::session::{Gateway, Session};

/// Serves one agent on `input`/`output` as `agent` until the input ends.
pub async fn serve_stdio<R, W>(
    gw: Arc<Gateway>,
    agent: &str,
    input: R,
    output: W,
) -> Result<(), Error>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let session = Session::new(&gw, agent, Vec::new(), tx.clone());
    let writer = tokio::spawn(async move {
        let mut output = output;
        while let Some(frame) = rx.recv().await {
            let Ok(mut bytes) = serde_json::to_vec(&frame) else {
                continue;
            };
            bytes.push(b'\n');
            if output.write_all(&bytes).await.is_err() || output.flush().await.is_err() {
                break;
            }
        }
    });
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).await?;
        if n == 0 {
            break;
        }
        if line.len() > MAX_FRAME {
            let _ = tx.send(jsonrpc::error(
                Value::Null,
                jsonrpc::PARSE_ERROR,
                "frame too large",
                None,
            ));
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let frame = match jsonrpc::parse_strict(&line) {
            Ok(frame) => frame,
            Err(e) => {
                let _ = tx.send(jsonrpc::error(
                    jsonrpc::recover_id(&line),
                    jsonrpc::PARSE_ERROR,
                    &e.to_string(),
                    None,
                ));
                continue;
            }
        };
        let session = session.clone();
        let tx = tx.clone();
        if jsonrpc::classify(&frame) == jsonrpc::Kind::Request {
            tokio::spawn(async move {
                if let Some(resp) = session.handle(frame).await {
                    let _ = tx.send(resp);
                }
            });
        } else if let Some(resp) = session.handle(frame).await {
            let _ = tx.send(resp);
        }
    }
    drop(tx);
    drop(session);
    let _ = writer.await;
    Ok(())
}
