//! Escape suite, network and egress proxy: each attempt must fail inside the sandbox, and each
//! has a control (outside, or through the proxy with the host allowed) that must succeed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use common::*;
use warden_sandbox::egress::{EgressDecision, HostRule};
use warden_sandbox::{PROXY_PORT_INSIDE, Profile};

/// A loopback TCP listener that counts connections that sent at least one byte, answering each
/// with `hello`.
fn tcp_listener() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let c = Arc::clone(&c);
            thread::spawn(move || {
                let mut buf = [0u8; 1024];
                if matches!(s.read(&mut buf), Ok(n) if n > 0) {
                    c.fetch_add(1, Ordering::SeqCst);
                }
                let _ = s.write_all(b"hello");
            });
        }
    });
    (port, count)
}

/// A loopback UDP echo server (also serves as a fake DNS server).
fn udp_echo() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    port
}

#[test]
fn direct_network_access_fails() {
    let (tcp, hits) = tcp_listener();
    let udp = udp_echo();
    let (tcp, udp) = (tcp.to_string(), udp.to_string());
    let cases: Vec<Vec<&str>> = vec![
        vec!["tcp", "127.0.0.1", &tcp],
        vec!["udp", "127.0.0.1", &udp],
        vec!["dns", "127.0.0.1", &udp],
        vec!["icmp", "127.0.0.1"],
        vec!["raw"],
        vec!["packet"],
        vec!["netlink"],
        vec!["vsock"],
    ];
    for case in &cases {
        assert_denied(&inside(Profile::default(), case), &case.join(" "));
        assert_ok_outside(&outside(case), &case.join(" "));
    }
    // No resolver configuration inside either.
    assert_denied(
        &inside(Profile::default(), &["stat", "/etc/resolv.conf"]),
        "resolv.conf",
    );

    // bash's /dev/tcp.
    let before = hits.load(Ordering::SeqCst);
    let script = format!("echo x > /dev/tcp/127.0.0.1/{tcp}");
    let r = run(Profile::default(), &["/bin/bash", "-c", &script]);
    assert_ne!(
        r.outcome.ending,
        warden_sandbox::Ending::Exited { code: 0 },
        "bash /dev/tcp"
    );
    let ctl = std::process::Command::new("/bin/bash")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(ctl.success(), "bash /dev/tcp control");
    for _ in 0..100 {
        if hits.load(Ordering::SeqCst) > before {
            break;
        }
        thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before + 1,
        "only the control's connection arrives"
    );
}

#[test]
fn host_unix_sockets_are_unreachable() {
    let dir = tempdir();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    set_mode(&path, 0o777);
    let name = format!("warden-escape-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let abstract_listener = UnixListener::bind_addr(&addr).unwrap();
    let p = path.to_str().unwrap();
    assert_denied(
        &inside(Profile::default(), &["unix", p]),
        "unix socket on disk",
    );
    let granted = Profile {
        read_write: vec![dir.path().to_owned()],
        ..Profile::default()
    };
    assert_ok_inside(
        &inside(granted, &["unix", p]),
        "unix socket in a granted dir",
    );
    assert_denied(
        &inside(Profile::default(), &["abstract", &name]),
        "abstract unix socket",
    );
    assert_ok_outside(&outside(&["abstract", &name]), "abstract unix socket");
    drop((listener, abstract_listener));
}

fn proxy_profile(port: u16) -> Profile {
    Profile {
        allow_hosts: vec![
            HostRule::parse(&format!("allowed.test:{port}")).unwrap(),
            HostRule::parse(&format!("*.wild.test:{port}")).unwrap(),
            HostRule::parse(&format!("meta.test:{port}")).unwrap(),
            HostRule::parse(&format!("private.test:{port}")).unwrap(),
            HostRule::parse(&format!("mapped.test:{port}")).unwrap(),
            HostRule::parse(&format!("localhost:{port}")).unwrap(),
        ],
        ..Profile::default()
    }
}

fn resolver() -> Arc<TestResolver> {
    let ip = |s: &str| s.parse().unwrap();
    Arc::new(TestResolver(vec![
        ("allowed.test", ip("127.0.0.1")),
        ("a.wild.test", ip("127.0.0.1")),
        ("evilwild.test", ip("127.0.0.1")),
        ("meta.test", ip("169.254.169.254")),
        ("private.test", ip("10.0.0.5")),
        ("mapped.test", ip("::ffff:127.0.0.1")),
    ]))
}

/// Runs `connect-proxy` cases in one sandbox; returns each case's line and the events.
fn through_proxy(
    cases: &[(String, &str)],
    danger_loopback: bool,
) -> (
    Vec<String>,
    Vec<warden_sandbox::egress::EgressEvent>,
    Profile,
) {
    let (port, _) = tcp_listener();
    let profile = proxy_profile(port);
    let probe = probe().to_str().unwrap().to_owned();
    let proxy = PROXY_PORT_INSIDE.to_string();
    let script: String = cases
        .iter()
        .map(|(target, sni)| {
            let target = target.replace("PORT", &port.to_string());
            format!("{probe} connect-proxy {proxy} {target} {sni}\n")
        })
        .collect();
    let mut opts = options();
    opts.resolver = resolver();
    opts.danger_allow_loopback_for_tests = danger_loopback;
    let r = run_with(profile.clone(), opts, &["/bin/sh", "-c", &script]);
    let lines = r.stdout.lines().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(lines.len(), cases.len(), "{:?} {:?}", r.stdout, r.stderr);
    (lines, r.events, profile)
}

#[test]
fn proxy_allows_only_listed_public_hosts_with_matching_sni() {
    let cases: Vec<(String, &str)> = vec![
        ("allowed.test:PORT".into(), "allowed.test"), // control: allowed
        ("A.WILD.test.:PORT".into(), "a.wild.test"),  // control: wildcard, case, dot
        ("127.0.0.1:PORT".into(), "127.0.0.1"),       // ip literal
        ("[::1]:PORT".into(), "x"),                   // ipv6 literal
        ("meta.test:PORT".into(), "meta.test"),       // cloud metadata address
        ("private.test:PORT".into(), "private.test"), // private address
        ("mapped.test:PORT".into(), "mapped.test"),   // ipv4-mapped loopback
        ("wild.test:PORT".into(), "wild.test"),       // wildcard does not match apex
        ("evilwild.test:PORT".into(), "evilwild.test"), // suffix trick
        ("allowed.test.evil.test:PORT".into(), "x"),  // suffix trick
        ("allowed.test:1".into(), "allowed.test"),    // wrong port
        ("allowed.test:PORT".into(), "other.test"),   // sni mismatch
        ("allowed.test:PORT".into(), "allowed.test.evil"), // sni suffix
    ];
    // Loopback is allowed for the test names only through the explicit danger option; the
    // mapped case shows it still refuses loopback in disguise.
    let (lines, events, _) = through_proxy(&cases, true);
    for (i, ((target, sni), line)) in cases.iter().zip(&lines).enumerate() {
        if i < 2 {
            assert!(line.starts_with("OK"), "control {target} sni {sni}: {line}");
        } else {
            assert!(line.starts_with("DENIED"), "{target} sni {sni}: {line}");
        }
    }
    let allowed = events
        .iter()
        .filter(|e| matches!(e.decision, EgressDecision::Allow { .. }))
        .count();
    let refused = events
        .iter()
        .filter(|e| matches!(e.decision, EgressDecision::Refuse { .. }))
        .count();
    assert_eq!(allowed, 2, "{events:#?}");
    assert_eq!(refused, cases.len() - 2, "{events:#?}");
    let reason = |host: &str| {
        events
            .iter()
            .find_map(|e| match &e.decision {
                EgressDecision::Refuse { reason } if e.host == host => Some(reason.clone()),
                _ => None,
            })
            .unwrap_or_default()
    };
    assert!(
        reason("meta.test").contains("169.254.169.254"),
        "{events:#?}"
    );
    assert!(reason("private.test").contains("private"), "{events:#?}");
    assert!(reason("127.0.0.1").contains("ip literal"), "{events:#?}");
}

#[test]
fn proxy_refuses_loopback_without_the_danger_option() {
    let cases: Vec<(String, &str)> = vec![
        ("allowed.test:PORT".into(), "allowed.test"),
        ("localhost:PORT".into(), "localhost"),
    ];
    let (lines, events, _) = through_proxy(&cases, false);
    assert_eq!(events.len(), 2, "{events:#?}");
    for (line, event) in lines.iter().zip(&events) {
        assert!(line.starts_with("DENIED"), "{lines:?}");
        assert!(
            matches!(&event.decision, EgressDecision::Refuse { reason } if reason.contains("loopback")),
            "{event:?}"
        );
    }
}

#[test]
fn proxy_variables_are_set_and_bypassing_them_fails() {
    let (port, _) = tcp_listener();
    let profile = proxy_profile(port);
    let probe = probe().to_str().unwrap().to_owned();
    let script = format!("echo $HTTPS_PROXY $http_proxy; {probe} tcp 127.0.0.1 {port}");
    let mut opts = options();
    opts.resolver = resolver();
    opts.danger_allow_loopback_for_tests = true;
    let r = run_with(profile, opts, &["/bin/sh", "-c", &script]);
    let url = format!("http://127.0.0.1:{PROXY_PORT_INSIDE}");
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some(format!("{url} {url}").as_str()));
    assert!(
        lines.next().unwrap_or("").starts_with("DENIED"),
        "{:?}",
        r.stdout
    );
    assert_ok_outside(
        &outside(&["tcp", "127.0.0.1", &port.to_string()]),
        "direct tcp",
    );
}
