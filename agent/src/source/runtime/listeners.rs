//! Listeners: TCP and UDP sockets of this network namespace that no rule, loopback
//! allowance or captured baseline listener explains.

use super::processes::DELETED_SUFFIX;
use super::RuntimeObservation;
use crate::policy::runtime::RuntimeConfig;
use driftwatch_protocol::path as dwpath;
use driftwatch_protocol::report::ListenerFinding;
use driftwatch_protocol::runtime::CapturedListener;
use procfs::ProcError;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// A listening socket of this network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Socket {
    /// `tcp`, `tcp6`, `udp` or `udp6`.
    protocol: &'static str,
    local: SocketAddr,
    inode: u64,
}

/// The process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owner {
    pid: i32,
    /// Its executable, without the kernel's ` (deleted)` suffix, when it can be read.
    program: Option<String>,
}

fn table<T>(
    name: &str,
    read: fn() -> procfs::ProcResult<Vec<T>>,
    observation: &mut RuntimeObservation,
) -> Vec<T> {
    match read() {
        Ok(entries) => entries,
        Err(ProcError::NotFound(_)) => {
            observation.skipped.push(format!(
                "listeners: /proc/net/{name} does not exist (protocol disabled on this kernel)"
            ));
            Vec::new()
        }
        Err(err) => {
            observation
                .errors
                .push(format!("listeners: cannot read /proc/net/{name}: {err}"));
            Vec::new()
        }
    }
}

/// TCP sockets in `LISTEN` and UDP sockets bound to a port with no peer.
fn read_sockets(observation: &mut RuntimeObservation) -> Vec<Socket> {
    use procfs::net::{TcpState, UdpState};
    let mut sockets = Vec::new();
    for (protocol, read) in [
        ("tcp", procfs::net::tcp as fn() -> _),
        ("tcp6", procfs::net::tcp6),
    ] {
        sockets.extend(
            table(protocol, read, observation)
                .into_iter()
                .filter(|e| e.state == TcpState::Listen)
                .map(|e| Socket {
                    protocol,
                    local: e.local_address,
                    inode: e.inode,
                }),
        );
    }
    for (protocol, read) in [
        ("udp", procfs::net::udp as fn() -> _),
        ("udp6", procfs::net::udp6),
    ] {
        sockets.extend(
            table(protocol, read, observation)
                .into_iter()
                .filter(|e| {
                    e.state == UdpState::Close
                        && e.local_address.port() != 0
                        && e.remote_address.port() == 0
                        && e.remote_address.ip().is_unspecified()
                })
                .map(|e| Socket {
                    protocol,
                    local: e.local_address,
                    inode: e.inode,
                }),
        );
    }
    sockets
}

/// Loopback addresses, including IPv4-mapped `::ffff:127.x.y.z` in the tcp6/udp6 tables.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The owners of `wanted` socket inodes, found through `/proc/*/fd` links of the form
/// `socket:[INODE]`; where several processes share one (forked workers), the lowest pid.
/// Best effort: processes we may not inspect, or that exit meanwhile, are passed over.
fn socket_owners(wanted: &HashSet<u64>) -> HashMap<u64, Owner> {
    let mut owners: HashMap<u64, Owner> = HashMap::new();
    if wanted.is_empty() {
        return owners;
    }
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return owners;
    };
    for dent in proc_dir.flatten() {
        let Some(pid) = dent
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // Plain readdir + readlink: one syscall per descriptor, where procfs's FDInfo
        // costs three — this loop visits every descriptor on the host.
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut program = None;
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = socket_inode(target.as_os_str().as_bytes()) else {
                continue;
            };
            if !wanted.contains(&inode) || owners.get(&inode).is_some_and(|o| o.pid < pid) {
                continue;
            }
            let program = program.get_or_insert_with(|| {
                fs::read_link(format!("/proc/{pid}/exe")).ok().map(|exe| {
                    let exe = exe.into_os_string().into_vec();
                    dwpath::display(exe.strip_suffix(DELETED_SUFFIX).unwrap_or(&exe))
                })
            });
            owners.insert(
                inode,
                Owner {
                    pid,
                    program: program.clone(),
                },
            );
        }
    }
    owners
}

/// The inode of an fd link target `socket:[12345]`.
fn socket_inode(target: &[u8]) -> Option<u64> {
    let inner = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// Whether a listener is allowed; `owner` is `None` when not (yet) known. A rule or a
/// captured listener that names a program matches only a listener whose owner is known
/// and runs that program — except a captured listener, which matches an unknown owner
/// too (its program is compared "when both are known").
fn listener_allowed(
    config: &RuntimeConfig,
    captured: &[CapturedListener],
    socket: &Socket,
    owner: Option<&Owner>,
) -> bool {
    let port = socket.local.port();
    if config.allow_loopback_listeners && is_loopback(socket.local.ip()) {
        return true;
    }
    let program = owner.and_then(|o| o.program.as_deref());
    let rule_allows = config.allowed_listeners.iter().any(|rule| {
        rule.port == port
            && rule.protocol.is_none_or(|p| p.matches(socket.protocol))
            && rule
                .program
                .as_deref()
                .is_none_or(|wanted| program == Some(wanted))
    });
    rule_allows
        || captured.iter().any(|c| {
            c.port == port
                && c.protocol == socket.protocol
                && match (c.program.as_deref(), program) {
                    (Some(wanted), Some(actual)) => wanted == actual,
                    _ => true,
                }
        })
}

/// True when the listener would be allowed whoever owns it, so its owner need not be
/// looked up.
fn allowed_whoever_owns(
    config: &RuntimeConfig,
    captured: &[CapturedListener],
    socket: &Socket,
) -> bool {
    let port = socket.local.port();
    (config.allow_loopback_listeners && is_loopback(socket.local.ip()))
        || config.allowed_listeners.iter().any(|rule| {
            rule.port == port
                && rule.protocol.is_none_or(|p| p.matches(socket.protocol))
                && rule.program.is_none()
        })
        || captured
            .iter()
            .any(|c| c.port == port && c.protocol == socket.protocol && c.program.is_none())
}

pub(super) fn observe(
    config: &RuntimeConfig,
    captured: Option<&[CapturedListener]>,
    findings: &mut Vec<ListenerFinding>,
    observation: &mut RuntimeObservation,
) {
    let captured = captured.unwrap_or(&[]);
    let candidates: Vec<Socket> = read_sockets(observation)
        .into_iter()
        .filter(|socket| !allowed_whoever_owns(config, captured, socket))
        .collect();
    // Walking every descriptor of every process is the expensive part: only for
    // listeners that are not already explained.
    let owners = socket_owners(&candidates.iter().map(|s| s.inode).collect());
    let mut reported: BTreeMap<(&str, SocketAddr), ListenerFinding> = BTreeMap::new();
    for socket in &candidates {
        let owner = owners.get(&socket.inode);
        if listener_allowed(config, captured, socket, owner) {
            continue;
        }
        let finding = ListenerFinding {
            protocol: socket.protocol.to_string(),
            address: socket.local.ip().to_string(),
            port: socket.local.port(),
            pid: owner.map(|o| o.pid),
            program: owner.and_then(|o| o.program.clone()),
            severity: config.listener_severity,
        };
        // SO_REUSEPORT groups show one address several times: report it once.
        reported
            .entry((socket.protocol, socket.local))
            .and_modify(|known| {
                if known.pid.is_none() || finding.pid.is_some_and(|p| Some(p) < known.pid) {
                    *known = finding.clone();
                }
            })
            .or_insert(finding);
    }
    findings.extend(reported.into_values());
}

/// Every listener of this network namespace (TCP `LISTEN`, bound unconnected UDP) with
/// its owning executable where it can be read, sorted and without duplicates: what
/// `baseline create --capture-runtime` records. Problems reading `/proc` leave listeners
/// out rather than failing.
pub(super) fn capture() -> Vec<CapturedListener> {
    let mut ignored = RuntimeObservation::default();
    let sockets = read_sockets(&mut ignored);
    let inodes: HashSet<u64> = sockets.iter().map(|s| s.inode).collect();
    let owners = socket_owners(&inodes);
    let mut captured: Vec<CapturedListener> = sockets
        .iter()
        .map(|socket| CapturedListener {
            protocol: socket.protocol.to_string(),
            address: socket.local.ip().to_string(),
            port: socket.local.port(),
            program: owners.get(&socket.inode).and_then(|o| o.program.clone()),
        })
        .collect();
    captured.sort();
    captured.dedup();
    captured
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::runtime::{ListenerProtocol, ListenerRule, RuntimeConfig};

    use driftwatch_protocol::report::{ListenerFinding, Severity};
    use driftwatch_protocol::runtime::{CapturedListener, CapturedRuntime};

    use std::net::{TcpListener, UdpSocket};

    use crate::source::runtime::observe;
    use crate::source::runtime::test_support::*;

    #[test]
    fn socket_helpers() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"socket:[x]"), None);

        for (ip, loopback) in [
            ("127.0.0.1", true),
            ("127.1.2.3", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("0.0.0.0", false),
            ("::", false),
            ("::ffff:10.0.0.1", false),
            ("10.1.2.3", false),
        ] {
            assert_eq!(is_loopback(ip.parse().unwrap()), loopback, "{ip}");
        }
    }

    // --- listeners ----------------------------------------------------------------

    fn listener_rule(
        port: u16,
        protocol: Option<ListenerProtocol>,
        program: Option<&str>,
    ) -> ListenerRule {
        ListenerRule {
            port,
            protocol,
            program: program.map(str::to_string),
        }
    }

    #[test]
    fn tcp_listeners_rules_and_captures() {
        let _live = live();
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = baseline_bytes("", Vec::new());
        let reader = open(&bytes);
        let me = own_exe();
        let found = |config: &RuntimeConfig, captured: Option<&[CapturedListener]>| {
            let captured = captured.map(|listeners| CapturedRuntime {
                listeners: listeners.to_vec(),
                executables: Vec::new(),
            });
            let observation = observe(config, &reader, captured.as_ref());
            listeners(&observation, port)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        };

        let base = no_mutable_paths();
        let reported = found(&base, None);
        assert_eq!(
            reported,
            [ListenerFinding {
                protocol: "tcp".into(),
                address: "0.0.0.0".into(),
                port,
                pid: Some(std::process::id() as i32),
                program: Some(me.clone()),
                severity: Severity::High,
            }]
        );

        let with_rules = |rules: Vec<ListenerRule>| RuntimeConfig {
            allowed_listeners: rules,
            ..no_mutable_paths()
        };
        use ListenerProtocol::{Tcp, Udp};
        for (rules, allowed) in [
            (vec![listener_rule(port, None, None)], true),
            (vec![listener_rule(port, Some(Tcp), None)], true),
            (vec![listener_rule(port, Some(Tcp), Some(&me))], true),
            (vec![listener_rule(port, Some(Udp), None)], false),
            (
                vec![listener_rule(port, None, Some("/usr/sbin/other"))],
                false,
            ),
            (
                vec![listener_rule(port.wrapping_add(1).max(1), None, None)],
                false,
            ),
        ] {
            let got = found(&with_rules(rules.clone()), None);
            assert_eq!(got.is_empty(), allowed, "{rules:?}: {got:?}");
        }

        let captured = |protocol: &str, program: Option<&str>| {
            vec![CapturedListener {
                protocol: protocol.into(),
                address: "0.0.0.0".into(),
                port,
                program: program.map(str::to_string),
            }]
        };
        for (list, allowed) in [
            (captured("tcp", Some(&me)), true),
            (captured("tcp", None), true),
            (captured("tcp", Some("/usr/sbin/other")), false),
            (captured("tcp6", Some(&me)), false),
        ] {
            let got = found(&base, Some(&list));
            assert_eq!(got.is_empty(), allowed, "{list:?}: {got:?}");
        }

        // Loopback only: not reported unless asked.
        let loopback = TcpListener::bind("127.0.0.1:0").unwrap();
        let loopback_port = loopback.local_addr().unwrap().port();
        let observation = observe(&base, &reader, None);
        assert!(listeners(&observation, loopback_port).is_empty());
        let strict = RuntimeConfig {
            allow_loopback_listeners: false,
            ..no_mutable_paths()
        };
        let observation = observe(&strict, &reader, None);
        let strict_found = listeners(&observation, loopback_port);
        assert_eq!(strict_found.len(), 1, "{observation:?}");
        assert_eq!(strict_found[0].address, "127.0.0.1");
    }

    #[test]
    fn udp_and_ipv6_listeners() {
        let _live = live();
        let bytes = baseline_bytes("", Vec::new());
        let reader = open(&bytes);
        let config = no_mutable_paths();
        let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
        let udp_port = udp.local_addr().unwrap().port();
        // A connected UDP socket is a client, not a listener.
        let client = UdpSocket::bind("0.0.0.0:0").unwrap();
        client.connect(udp.local_addr().unwrap()).unwrap();
        let client_port = client.local_addr().unwrap().port();
        let v6 = TcpListener::bind("[::]:0").ok();
        let v6_loopback = TcpListener::bind("[::1]:0").ok();

        let observation = observe(&config, &reader, None);
        let found = listeners(&observation, udp_port);
        assert_eq!(found.len(), 1, "{observation:?}");
        assert_eq!(
            (found[0].protocol.as_str(), found[0].address.as_str()),
            ("udp", "0.0.0.0")
        );
        assert_eq!(found[0].pid, Some(std::process::id() as i32));
        assert!(listeners(&observation, client_port).is_empty());
        match (&v6, &v6_loopback) {
            (Some(v6), Some(v6_loopback)) => {
                let found = listeners(&observation, v6.local_addr().unwrap().port());
                assert_eq!(found.len(), 1, "{observation:?}");
                assert_eq!(
                    (found[0].protocol.as_str(), found[0].address.as_str()),
                    ("tcp6", "::")
                );
                assert!(
                    listeners(&observation, v6_loopback.local_addr().unwrap().port()).is_empty()
                );
            }
            _ => eprintln!("skipping the IPv6 part: cannot bind IPv6 sockets here"),
        }
        let allowed = RuntimeConfig {
            allowed_listeners: vec![listener_rule(udp_port, Some(ListenerProtocol::Udp), None)],
            ..no_mutable_paths()
        };
        assert!(listeners(&observe(&allowed, &reader, None), udp_port).is_empty());
    }

    #[test]
    fn capture_lists_our_listeners_sorted() {
        let _live = live();
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let captured = super::capture();
        assert!(
            captured.contains(&CapturedListener {
                protocol: "tcp".into(),
                address: "0.0.0.0".into(),
                port,
                program: Some(own_exe()),
            }),
            "{captured:?}"
        );
        assert!(captured.windows(2).all(|w| w[0] < w[1]), "{captured:?}");
        // What was captured is allowed later.
        let bytes = baseline_bytes("", Vec::new());
        let captured = CapturedRuntime {
            listeners: captured,
            executables: Vec::new(),
        };
        let observation = observe(&no_mutable_paths(), &open(&bytes), Some(&captured));
        assert!(listeners(&observation, port).is_empty());
    }
}
