//! Attestation of Workload API callers by their socket peer credentials.
//!
//! The kernel tells us the caller's uid, gid and pid (`SO_PEERCRED`, taken at `connect`). From
//! `/proc/<pid>` we add the executable's path and its SHA-256. A pid can be reused once its
//! process exits, so the process's start time is read when the connection is accepted and again
//! after `/proc` has been read: if it differs, the process we looked at is not the caller, and
//! attestation fails (closed).

use std::io::Read as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use crate::{Error, Selector};

/// What is known of a connected caller; the tonic connect info of the Workload API.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    uid: u32,
    gid: u32,
    pid: Option<i32>,
    /// Start time of `pid` (clock ticks since boot) read at accept time.
    start_time: Option<u64>,
    /// Selectors, computed once per connection.
    selectors: Arc<OnceLock<Result<Vec<Selector>, String>>>,
}

impl PeerInfo {
    /// Reads the peer credentials of `stream` and the start time of its process.
    pub fn of(stream: &UnixStream) -> Self {
        match stream.peer_cred() {
            Ok(cred) => {
                let pid = cred.pid();
                Self {
                    uid: cred.uid(),
                    gid: cred.gid(),
                    pid,
                    start_time: pid.and_then(|p| process_start_time(p).ok()),
                    selectors: Arc::default(),
                }
            }
            // No credentials: an identity nobody can be registered for, and no pid.
            Err(_) => Self {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: None,
                start_time: None,
                selectors: Arc::default(),
            },
        }
    }

    /// The caller's selectors: `unix:uid`, `unix:gid`, `unix:path`, `unix:sha256`.
    pub fn selectors(&self) -> Result<Vec<Selector>, Error> {
        self.selectors
            .get_or_init(|| self.attest().map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::Attestation)
    }

    fn attest(&self) -> Result<Vec<Selector>, Error> {
        if self.uid == u32::MAX {
            return Err(Error::Attestation("no peer credentials".into()));
        }
        let (Some(pid), Some(start)) = (self.pid, self.start_time) else {
            return Err(Error::Attestation("the caller's process is unknown".into()));
        };
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let exe_link = proc_dir.join("exe");
        let path = std::fs::read_link(&exe_link).map_err(|e| Error::io(&exe_link, e))?;
        let hash = sha256_file(&exe_link)?;
        // The guard: the process we read must still be the one that connected.
        if process_start_time(pid)? != start {
            return Err(Error::Attestation(format!(
                "process {pid} exited or its pid was reused during attestation"
            )));
        }
        let path = path
            .to_str()
            .ok_or_else(|| Error::Attestation("executable path is not UTF-8".into()))?
            .to_owned();
        Ok(vec![
            Selector::Uid(self.uid),
            Selector::Gid(self.gid),
            Selector::Path(path),
            Selector::Sha256(hash),
        ])
    }
}

fn sha256_file(path: &std::path::Path) -> Result<String, Error> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        let Some(chunk) = buf.get(..n) else { break };
        if chunk.is_empty() {
            break;
        }
        hasher.update(chunk);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
pub fn process_start_time(pid: i32) -> Result<u64, Error> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let stat = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    parse_start_time(&stat)
        .ok_or_else(|| Error::Attestation(format!("unreadable `{}`", path.display())))
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may itself hold spaces and parentheses.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    // Fields from 3 (state) on; start time is field 22.
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// A unix connection that remembers who connected; the Workload API's transport.
#[derive(Debug)]
pub struct AttestedStream {
    inner: UnixStream,
    info: PeerInfo,
}

impl AttestedStream {
    /// Captures the peer's credentials and process start time right at accept.
    pub fn new(inner: UnixStream) -> Self {
        let info = PeerInfo::of(&inner);
        Self { inner, info }
    }
}

impl Connected for AttestedStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for AttestedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AttestedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_parses_odd_command_names() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("42 (x"), None);
        assert_eq!(parse_start_time(""), None);
    }

    #[test]
    fn own_process_start_time_is_stable() {
        let pid = i32::try_from(std::process::id()).unwrap();
        assert_eq!(
            process_start_time(pid).unwrap(),
            process_start_time(pid).unwrap()
        );
    }
}
