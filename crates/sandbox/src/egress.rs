//! Egress: the HTTP CONNECT proxy Warden runs outside the sandbox, and its allowlist.
//!
//! The sandbox has an empty network namespace; its only way out is a relay on `127.0.0.1`
//! inside the namespace that forwards to this proxy over a bind-mounted unix socket. The proxy:
//! - accepts only `CONNECT host:port` (HTTPS tunnels); plain-HTTP proxying is refused;
//! - allows a host only if a [`HostRule`] matches it (exact name or anchored `*.` suffix,
//!   compared case-insensitively without a trailing dot) with the same port; IP literals never
//!   match;
//! - resolves the name itself and refuses the connection if any address is loopback, private,
//!   link-local, CGNAT, multicast, unspecified, reserved or a cloud metadata address (IPv4 and
//!   IPv6, including mapped, NAT64, 6to4 and Teredo forms);
//! - reads the client's first TLS record and requires a ClientHello whose SNI equals the
//!   CONNECT host;
//! - reports every allowed and refused connection as an [`EgressEvent`].

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crate::Error;

/// Longest CONNECT request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Longest TLS record accepted as the first record (2^14 plus header and slack).
const MAX_RECORD: usize = 16 * 1024 + 2048;
/// Most tunnels one proxy (one sandbox) may hold open at once; more are refused.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request or ClientHello, and an upstream to accept.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One allowlist entry: a host pattern and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    /// Normalised host name, without the `*.` of a wildcard.
    name: String,
    /// Whether the rule is `*.name`: matches strict subdomains of `name` only.
    wildcard: bool,
    /// The port.
    port: u16,
}

impl HostRule {
    /// Parses `HOST:PORT`, where `HOST` is a DNS name or `*.` followed by one.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error::Profile(format!("invalid host rule `{s}`: expected `HOST:PORT`"));
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        let name = normalize_host(name)
            .map_err(|_| Error::Profile(format!("invalid host `{host}` in rule `{s}`")))?;
        if name.parse::<Ipv4Addr>().is_ok() {
            return Err(Error::Profile(format!(
                "host rule `{s}` names an ip address"
            )));
        }
        Ok(Self {
            name,
            wildcard,
            port,
        })
    }

    /// Whether a normalised host and port match this rule.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        if self.wildcard {
            host.strip_suffix(self.name.as_str())
                .and_then(|prefix| prefix.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty())
        } else {
            host == self.name
        }
    }
}

impl std::fmt::Display for HostRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let star = if self.wildcard { "*." } else { "" };
        write!(f, "{star}{}:{}", self.name, self.port)
    }
}

/// Lowercases a DNS name, drops one trailing dot and checks its syntax (LDH labels of 1 to 63
/// bytes, 253 bytes in all). IPv6 literals and anything else are refused.
pub fn normalize_host(host: &str) -> Result<String, Error> {
    let bad = || Error::Egress(format!("invalid host name `{host}`"));
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(name.to_owned())
}

/// Why an address may not be reached, or `None` if it is a public unicast address.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let reason = match (a, b, c) {
        _ if ip == Ipv4Addr::new(168, 63, 129, 16) => "cloud metadata",
        _ if ip == Ipv4Addr::new(100, 100, 100, 200) => "cloud metadata",
        (169, 254, _) => "link-local or cloud metadata",
        (0, _, _) => "unspecified",
        (127, _, _) => "loopback",
        (10, _, _) | (192, 168, _) => "private",
        (172, 16..=31, _) => "private",
        (100, 64..=127, _) => "carrier-grade nat",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast",
        (192, 0, 0) | (198, 18..=19, _) => "reserved",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "reserved",
        _ => return None,
    };
    Some(reason)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let [s0, s1, s2, s3, s4, s5, s6, s7] = s;
    let embedded = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (deprecated compatible): judge the IPv4 address.
    if s0 == 0 && s1 == 0 && s2 == 0 && s3 == 0 && s4 == 0 && (s5 == 0xffff || s5 == 0) {
        return Some(forbidden_v4(embedded(s6, s7)).unwrap_or("ipv4-mapped"));
    }
    // 64:ff9b::/96 and 64:ff9b:1::/48 (NAT64) embed an IPv4 address the gateway would reach.
    if s0 == 0x64 && s1 == 0xff9b {
        return Some(forbidden_v4(embedded(s6, s7)).unwrap_or("nat64"));
    }
    match s0 {
        0x2002 => Some(forbidden_v4(embedded(s1, s2)).unwrap_or("6to4")),
        0x2001 if s1 == 0 => Some("teredo"),
        0x2001 if s1 == 0x0db8 => Some("documentation"),
        0x0100 if s1 == 0 && s2 == 0 && s3 == 0 => Some("discard"),
        0xfd00 if s1 == 0x0ec2 => Some("cloud metadata"),
        _ if s0 & 0xfe00 == 0xfc00 => Some("unique local (private)"),
        _ if s0 & 0xffc0 == 0xfe80 => Some("link-local"),
        _ if s0 & 0xffc0 == 0xfec0 => Some("site-local"),
        _ if s0 & 0xff00 == 0xff00 => Some("multicast"),
        _ => None,
    }
}

/// Extracts the server name from a TLS record holding a ClientHello. `Ok(None)` means a
/// well-formed ClientHello without SNI; an error means the bytes are not a ClientHello.
pub fn client_hello_sni(record: &[u8]) -> Result<Option<String>, Error> {
    let bad = |what: &str| Error::Egress(format!("not a tls client hello: {what}"));
    let mut r = Reader(record);
    if r.u8()? != 0x16 {
        return Err(bad("not a handshake record"));
    }
    r.take(2)?; // legacy record version
    let len = usize::from(r.u16()?);
    let mut hs = Reader(r.take(len)?);
    if hs.u8()? != 1 {
        return Err(bad("not a client hello"));
    }
    let hs_len = hs.u24()?;
    let mut body = Reader(hs.take(hs_len)?);
    body.take(2 + 32)?; // version, random
    let sid = usize::from(body.u8()?);
    body.take(sid)?;
    let suites = usize::from(body.u16()?);
    body.take(suites)?;
    let comp = usize::from(body.u8()?);
    body.take(comp)?;
    if body.0.is_empty() {
        return Ok(None);
    }
    let ext_len = usize::from(body.u16()?);
    let mut exts = Reader(body.take(ext_len)?);
    let mut found = None;
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let data = exts.take(len)?;
        if kind != 0 {
            continue;
        }
        if found.is_some() {
            return Err(bad("two server_name extensions"));
        }
        let mut sni = Reader(data);
        let list_len = usize::from(sni.u16()?);
        let mut list = Reader(sni.take(list_len)?);
        let mut name = None;
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let len = usize::from(list.u16()?);
            let value = list.take(len)?;
            if name_type == 0 {
                if name.is_some() {
                    return Err(bad("two host names"));
                }
                let s = std::str::from_utf8(value).map_err(|_| bad("host name not utf-8"))?;
                name = Some(s.to_owned());
            }
        }
        found = Some(name.ok_or_else(|| bad("server_name without a host name"))?);
    }
    Ok(found)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.0.len() {
            return Err(Error::Egress(
                "not a tls client hello: truncated".to_owned(),
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([
            b.first().copied().unwrap_or(0),
            b.get(1).copied().unwrap_or(0),
        ]))
    }
    fn u24(&mut self) -> Result<usize, Error> {
        let b = self.take(3)?;
        Ok(b.iter().fold(0usize, |acc, x| (acc << 8) | usize::from(*x)))
    }
}

/// Resolves host names for the proxy. The system resolver is [`SystemResolver`]; tests inject
/// fixed answers.
pub trait Resolve: Send + Sync {
    /// Addresses of `host`.
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<IpAddr>>;
}

/// The system resolver (`getaddrinfo`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<IpAddr>> {
        Ok((host, port).to_socket_addrs()?.map(|a| a.ip()).collect())
    }
}

/// What the proxy decided about one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressDecision {
    /// The tunnel was opened to `address`.
    Allow {
        /// The upstream address.
        address: SocketAddr,
    },
    /// The connection was refused.
    Refuse {
        /// Why, in words fit for a log.
        reason: String,
    },
}

/// One egress connection attempt, reported to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressEvent {
    /// The requested host, as sent (normalised when valid).
    pub host: String,
    /// The requested port (0 when the request could not be parsed).
    pub port: u16,
    /// The decision.
    pub decision: EgressDecision,
}

/// Receives egress events; called from the proxy's threads.
pub type EgressSink = Arc<dyn Fn(EgressEvent) + Send + Sync>;

/// The proxy's policy.
#[derive(Clone)]
pub struct EgressPolicy {
    /// Allowed hosts and ports.
    pub rules: Vec<HostRule>,
    /// Name resolution.
    pub resolver: Arc<dyn Resolve>,
    /// Lets rules reach loopback addresses: only for tests that point the allowlist at a local
    /// listener. Never set in production.
    pub danger_allow_loopback_for_tests: bool,
}

impl std::fmt::Debug for EgressPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressPolicy")
            .field("rules", &self.rules)
            .field(
                "danger_allow_loopback_for_tests",
                &self.danger_allow_loopback_for_tests,
            )
            .finish_non_exhaustive()
    }
}

/// A running proxy; stops accepting when dropped.
pub struct EgressProxy {
    stop: Arc<AtomicBool>,
    path: std::path::PathBuf,
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressProxy")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EgressProxy {
    /// Listens on a new unix socket at `path` and serves each connection on its own thread.
    pub fn start(path: &Path, policy: EgressPolicy, sink: EgressSink) -> Result<Self, Error> {
        let listener = UnixListener::bind(path)
            .map_err(|e| Error::Egress(format!("cannot listen on `{}`: {e}", path.display())))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let policy = Arc::new(policy);
        let active = Arc::new(AtomicUsize::new(0));
        thread::Builder::new()
            .name("warden-egress".to_owned())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop_flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                        active.fetch_sub(1, Ordering::SeqCst);
                        let _ = conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
                        sink(EgressEvent {
                            host: String::new(),
                            port: 0,
                            decision: EgressDecision::Refuse {
                                reason: format!("more than {MAX_CONNECTIONS} open tunnels"),
                            },
                        });
                        continue;
                    }
                    let policy = Arc::clone(&policy);
                    let sink = Arc::clone(&sink);
                    let active_conn = Arc::clone(&active);
                    let spawned = thread::Builder::new()
                        .name("warden-egress-conn".to_owned())
                        .spawn(move || {
                            serve(conn, &policy, &sink);
                            active_conn.fetch_sub(1, Ordering::SeqCst);
                        });
                    if spawned.is_err() {
                        active.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })
            .map_err(|e| Error::Egress(format!("cannot start the proxy thread: {e}")))?;
        Ok(Self {
            stop,
            path: path.to_owned(),
        })
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
    }
}

fn serve(mut client: UnixStream, policy: &EgressPolicy, sink: &EgressSink) {
    let _ = client.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let refuse =
        |client: &mut UnixStream, host: String, port: u16, status: &str, reason: String| {
            let _ = client
                .write_all(format!("HTTP/1.1 {status}\r\nConnection: close\r\n\r\n").as_bytes());
            sink(EgressEvent {
                host,
                port,
                decision: EgressDecision::Refuse { reason },
            });
        };
    let head = match read_head(&mut client) {
        Ok(h) => h,
        Err(reason) => return refuse(&mut client, String::new(), 0, "400 Bad Request", reason),
    };
    let (host, port) = match parse_connect(&head) {
        Ok(t) => t,
        Err((status, reason)) => return refuse(&mut client, String::new(), 0, status, reason),
    };
    let decision = decide(&host, port, policy);
    let (host, addrs) = match decision {
        Ok(t) => t,
        Err((h, reason)) => return refuse(&mut client, h, port, "403 Forbidden", reason),
    };
    let mut upstream = None;
    for ip in &addrs {
        let addr = SocketAddr::new(*ip, port);
        if let Ok(s) = TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT) {
            upstream = Some((s, addr));
            break;
        }
    }
    let Some((mut upstream, address)) = upstream else {
        return refuse(
            &mut client,
            host,
            port,
            "502 Bad Gateway",
            "upstream unreachable".to_owned(),
        );
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let first = match read_tls_record(&mut client) {
        Ok(r) => r,
        Err(reason) => {
            sink(EgressEvent {
                host,
                port,
                decision: EgressDecision::Refuse { reason },
            });
            return;
        }
    };
    let sni = client_hello_sni(&first).ok().flatten();
    let sni_ok = sni
        .as_deref()
        .and_then(|s| normalize_host(s).ok())
        .is_some_and(|s| s == host);
    if !sni_ok {
        let shown = sni.map_or_else(|| "none".to_owned(), |s| format!("`{s}`"));
        let reason = format!("tls server name {shown} does not match the connect host");
        sink(EgressEvent {
            host,
            port,
            decision: EgressDecision::Refuse { reason },
        });
        return;
    }
    if upstream.write_all(&first).is_err() {
        return;
    }
    sink(EgressEvent {
        host,
        port,
        decision: EgressDecision::Allow { address },
    });
    let _ = client.set_read_timeout(None);
    splice(client, upstream);
}

/// Checks a CONNECT target against the policy and resolves it. Returns the normalised host and
/// its addresses, or the host as shown and the reason for refusal.
fn decide(
    host: &str,
    port: u16,
    policy: &EgressPolicy,
) -> Result<(String, Vec<IpAddr>), (String, String)> {
    let trimmed = host.trim_start_matches('[').trim_end_matches(']');
    if trimmed.parse::<IpAddr>().is_ok() {
        return Err((host.to_owned(), "ip literals are not allowed".to_owned()));
    }
    let name = normalize_host(host).map_err(|e| (host.to_owned(), e.to_string()))?;
    if name
        .split('.')
        .next_back()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err((name, "numeric host names are not allowed".to_owned()));
    }
    if !policy.rules.iter().any(|r| r.matches(&name, port)) {
        return Err((name, "host and port not in the allowlist".to_owned()));
    }
    let addrs = policy
        .resolver
        .resolve(&name, port)
        .map_err(|e| (name.clone(), format!("cannot resolve: {e}")))?;
    if addrs.is_empty() {
        return Err((name, "no addresses".to_owned()));
    }
    for ip in &addrs {
        if let Some(why) = forbidden_reason(*ip) {
            let loopback_ok = policy.danger_allow_loopback_for_tests && ip.is_loopback();
            if !loopback_ok {
                return Err((
                    name,
                    format!("resolves to a forbidden address {ip} ({why})"),
                ));
            }
        }
    }
    Ok((name, addrs))
}

fn read_head(client: &mut UnixStream) -> Result<Vec<u8>, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte so nothing after the head (the ClientHello) is consumed here.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err("request head too long".to_owned());
        }
        match client.read(&mut byte) {
            Ok(1) => head.extend_from_slice(&byte),
            _ => return Err("incomplete request".to_owned()),
        }
    }
    Ok(head)
}

/// Parses `CONNECT host:port HTTP/1.x` into the host (brackets kept) and port.
fn parse_connect(head: &[u8]) -> Result<(String, u16), (&'static str, String)> {
    let text = std::str::from_utf8(head)
        .map_err(|_| ("400 Bad Request", "request not utf-8".to_owned()))?;
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(("400 Bad Request", "malformed request line".to_owned()));
    };
    if method != "CONNECT" {
        return Err((
            "405 Method Not Allowed",
            format!("method `{method}` refused: only CONNECT tunnels"),
        ));
    }
    if !version.starts_with("HTTP/1.") {
        return Err(("400 Bad Request", "unsupported http version".to_owned()));
    }
    let (host, port) = target
        .rsplit_once(':')
        .ok_or(("400 Bad Request", format!("target `{target}` has no port")))?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0).ok_or((
        "400 Bad Request",
        format!("target `{target}` has an invalid port"),
    ))?;
    Ok((host.to_owned(), port))
}

fn read_tls_record(client: &mut UnixStream) -> Result<Vec<u8>, String> {
    let mut header = [0u8; 5];
    client
        .read_exact(&mut header)
        .map_err(|_| "no tls client hello".to_owned())?;
    let [kind, _, _, hi, lo] = header;
    if kind != 0x16 {
        return Err("tunnel does not start with a tls handshake".to_owned());
    }
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len + 5 > MAX_RECORD {
        return Err("tls record too long".to_owned());
    }
    let mut record = header.to_vec();
    record.resize(5 + len, 0);
    client
        .read_exact(record.get_mut(5..).unwrap_or_default())
        .map_err(|_| "truncated tls client hello".to_owned())?;
    Ok(record)
}

fn splice(client: UnixStream, upstream: TcpStream) {
    let (Ok(mut client_r), Ok(mut upstream_w)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = thread::Builder::new().spawn(move || {
        let _ = io::copy(&mut client_r, &mut upstream_w);
        let _ = upstream_w.shutdown(Shutdown::Write);
    });
    let Ok(up) = up else { return };
    let (mut upstream_r, mut client_w) = (upstream, client);
    let _ = io::copy(&mut upstream_r, &mut client_w);
    let _ = client_w.shutdown(Shutdown::Write);
    let _ = up.join();
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn host_rules_are_anchored_and_normalised() {
        let exact = HostRule::parse("API.Example.com.:443").unwrap();
        assert!(exact.matches("api.example.com", 443));
        assert!(!exact.matches("api.example.com", 80));
        assert!(!exact.matches("xapi.example.com", 443));
        let wild = HostRule::parse("*.example.com:443").unwrap();
        assert!(wild.matches("a.example.com", 443));
        assert!(wild.matches("a.b.example.com", 443));
        assert!(!wild.matches("example.com", 443));
        assert!(!wild.matches("evilexample.com", 443));
        assert!(!wild.matches("example.com.evil.net", 443));
        assert!(HostRule::parse("1.2.3.4:443").is_err());
        assert!(HostRule::parse("*.:443").is_err());
        assert!(HostRule::parse("a..b:443").is_err());
        assert!(HostRule::parse("host:0").is_err());
        assert_eq!(normalize_host("Example.COM.").unwrap(), "example.com");
        assert!(normalize_host("example.com..").is_err());
    }

    #[test]
    fn forbidden_addresses() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.100.100.200",
            "168.63.129.16",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378::1",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            assert!(forbidden_reason(ip).is_some(), "{s} should be forbidden");
        }
        for s in ["93.184.216.34", "172.32.0.1", "2606:4700::1111", "8.8.8.8"] {
            let ip: IpAddr = s.parse().unwrap();
            assert!(forbidden_reason(ip).is_none(), "{s} should be allowed");
        }
    }

    #[test]
    fn parses_connect_lines() {
        assert_eq!(
            parse_connect(b"CONNECT a.b:443 HTTP/1.1\r\n\r\n").unwrap(),
            ("a.b".to_owned(), 443)
        );
        assert!(parse_connect(b"GET http://a.b/ HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_connect(b"CONNECT a.b HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_connect(b"CONNECT a.b:99999 HTTP/1.1\r\n\r\n").is_err());
    }

    /// A minimal ClientHello carrying `name` as SNI.
    pub(crate) fn hello(name: &str) -> Vec<u8> {
        let n = name.as_bytes();
        let mut sni = Vec::new();
        sni.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(n.len() as u16).to_be_bytes());
        sni.extend_from_slice(n);
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sni);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn open_tunnels_are_capped_and_plain_http_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink_events = Arc::clone(&events);
        let policy = EgressPolicy {
            rules: vec![HostRule::parse("a.test:443").unwrap()],
            resolver: Arc::new(SystemResolver),
            danger_allow_loopback_for_tests: false,
        };
        let sink: EgressSink = Arc::new(move |e| sink_events.lock().unwrap().push(e));
        let _proxy = EgressProxy::start(&path, policy, sink).unwrap();
        let held: Vec<UnixStream> = (0..MAX_CONNECTIONS)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let mut extra = UnixStream::connect(&path).unwrap();
        let mut reply = String::new();
        extra.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
        drop(held);
        // Each dropped connection is reported (no request) and frees its slot.
        let closed = |events: &Arc<std::sync::Mutex<Vec<EgressEvent>>>| {
            events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.decision == refused("incomplete request"))
                .count()
        };
        for _ in 0..500 {
            if closed(&events) == MAX_CONNECTIONS {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(closed(&events), MAX_CONNECTIONS);
        let mut plain = UnixStream::connect(&path).unwrap();
        plain
            .write_all(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        plain.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
        let events = events.lock().unwrap();
        assert_eq!(events.len(), MAX_CONNECTIONS + 2, "{events:?}");
        let capped = format!("more than {MAX_CONNECTIONS} open tunnels");
        assert!(events.iter().any(|e| e.decision == refused(&capped)));
        assert!(events.iter().any(|e| matches!(&e.decision,
            EgressDecision::Refuse { reason } if reason.contains("only CONNECT"))));
    }

    fn refused(reason: &str) -> EgressDecision {
        EgressDecision::Refuse {
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn reads_sni_and_rejects_garbage() {
        assert_eq!(
            client_hello_sni(&hello("a.example.com"))
                .unwrap()
                .as_deref(),
            Some("a.example.com")
        );
        let h = hello("x.y");
        for cut in 0..h.len() {
            assert!(client_hello_sni(&h[..cut]).is_err());
        }
        assert!(client_hello_sni(b"GET / HTTP/1.1\r\n\r\n").is_err());
    }
}
