//! The local admin endpoint: a unix socket (mode 0600) through which `warden approvals` lists
//! and answers held calls of a running gateway.
//!
//! One JSON object a line each way: `{"op": "list"}` → `{"pending": [...]}`;
//! `{"op": "answer", "id": ID, "granted": BOOL, "name": NAME?}` → `{"ok": BOOL}`. The approver
//! recorded is the peer's uid as the kernel reports it (`unix:uid=N`), with the name the operator
//! gave in front when there is one: the name is a claim, the uid is authenticated.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::error::Error;
use crate::session::Gateway;

/// Binds the admin socket at `path` (replacing a stale one) and serves it until dropped.
pub async fn serve_admin(gw: Arc<Gateway>, path: &Path) -> Result<(), Error> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let gw = gw.clone();
        tokio::spawn(async move {
            let _ = connection(gw, stream).await;
        });
    }
}

async fn connection(gw: Arc<Gateway>, stream: UnixStream) -> Result<(), Error> {
    let uid = stream.peer_cred()?.uid();
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = match crate::jsonrpc::parse_strict(line.as_bytes()) {
            Ok(req) => handle(&gw, uid, &req),
            Err(e) => json!({"error": e.to_string()}),
        };
        let mut bytes = serde_json::to_vec(&answer).map_err(|e| Error::Config(e.to_string()))?;
        bytes.push(b'\n');
        w.write_all(&bytes).await?;
    }
    Ok(())
}

fn handle(gw: &Gateway, uid: u32, req: &Value) -> Value {
    match req.get("op").and_then(Value::as_str) {
        Some("list") => json!({"pending": gw.pending_approvals()}),
        Some("answer") => {
            let (Some(id), Some(granted)) = (
                req.get("id").and_then(Value::as_str),
                req.get("granted").and_then(Value::as_bool),
            ) else {
                return json!({"error": "`answer` needs `id` and `granted`"});
            };
            let approver = match req
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                Some(name) => format!("{name} (unix:uid={uid})"),
                None => format!("unix:uid={uid}"),
            };
            json!({"ok": gw.answer_approval(id, granted, &approver), "approver": approver})
        }
        _ => json!({"error": "unknown op"}),
    }
}

/// Sends one admin request to the gateway listening at `path`.
pub async fn admin_request(path: &Path, req: &Value) -> Result<Value, Error> {
    let stream = UnixStream::connect(path).await?;
    let (r, mut w) = stream.into_split();
    let mut bytes = serde_json::to_vec(req).map_err(|e| Error::Config(e.to_string()))?;
    bytes.push(b'\n');
    w.write_all(&bytes).await?;
    let mut lines = BufReader::new(r).lines();
    let line = lines
        .next_line()
        .await?
        .ok_or_else(|| Error::Config("the gateway closed the admin socket".into()))?;
    serde_json::from_str(&line).map_err(|e| Error::Config(e.to_string()))
}
