//! haproxy in `mode tcp` in front of collector replicas, as an operator would run it:
//! TLS passes through untouched, so mutual TLS still ends at a collector and the
//! collector still sees the agent's own certificate.
//!
//! Health checks are TLS handshakes plus `GET /healthz` (no client certificate needed
//! for it), every 300 ms: a replica that is killed leaves the rotation within a second,
//! and comes back when it answers again.

use crate::{append_log, die_with_test, missing_prerequisite, stop_child, wait_until};
use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running haproxy: one frontend on `ip:port`, one backend per collector replica.
pub struct LoadBalancer {
    dir: tempfile::TempDir,
    /// The address agents and the CLI reach it at.
    pub ip: String,
    /// Its frontend port.
    pub port: u16,
    child: Option<Child>,
}

impl LoadBalancer {
    /// Starts haproxy on `ip:port` in front of `backends` (ports on `ip`), or says why
    /// it cannot (`None` outside CI when haproxy is not installed).
    pub fn start(ip: &str, port: u16, backends: &[u16]) -> Option<LoadBalancer> {
        let Some(haproxy) = crate::postgres::which("haproxy")
            .or_else(|| Some(PathBuf::from("/usr/sbin/haproxy")).filter(|p| p.is_file()))
        else {
            missing_prerequisite("haproxy is not installed (apt-get install haproxy)");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("driftwatch-haproxy-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, config_text(ip, port, backends)).unwrap();
        let check = crate::run(Command::new(&haproxy).args(["-c", "-q", "-f"]).arg(&config));
        assert!(
            check.status.success(),
            "haproxy rejects its configuration: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let log = append_log(&dir.path().join("haproxy.log"));
        let child = die_with_test(
            Command::new(&haproxy)
                .arg("-f")
                .arg(&config)
                .arg("-db")
                .stdout(Stdio::null())
                .stderr(log),
        )
        .spawn()
        .unwrap();
        let mut balancer = LoadBalancer {
            dir,
            ip: ip.to_string(),
            port,
            child: Some(child),
        };
        wait_until(Duration::from_secs(10), "haproxy to listen", || {
            if let Some(Ok(Some(status))) = balancer.child.as_mut().map(Child::try_wait) {
                panic!("haproxy exited ({status}): {}", balancer.log());
            }
            TcpStream::connect((ip, port)).ok()
        });
        Some(balancer)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGKILL);
        }
    }
}

/// The configuration: TCP mode, round robin, fast health checks, a retry on another
/// replica when a connection to one fails.
fn config_text(ip: &str, port: u16, backends: &[u16]) -> String {
    let mut text = format!(
        "global\n  maxconn 4096\n\n\
         defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  \
         timeout server 60s\n  retries 3\n  option redispatch\n\n\
         frontend collectors\n  bind {ip}:{port}\n  default_backend replicas\n\n\
         backend replicas\n  balance roundrobin\n  option httpchk GET /healthz\n  \
         default-server check check-ssl verify none inter 300ms fall 1 rise 1\n"
    );
    for (i, backend) in backends.iter().enumerate() {
        writeln!(text, "  server replica{i} {ip}:{backend}").unwrap();
    }
    text
}
