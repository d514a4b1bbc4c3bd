//! Real containers for the end-to-end tests: podman with runc (crun refuses this
//! machine's hybrid cgroups), rlimits within the hard limits, no network, and an image
//! imported from a rootfs the test builds around a static busybox (there is no
//! registry). Everything a [`Podman`] made is removed when it is dropped.

use std::path::Path;
use std::process::Command;

const RUNC: &str = "/usr/sbin/runc";

/// Why real containers cannot run here, if they cannot: root, podman, runc and a
/// static `/bin/busybox` (Debian's busybox-static) are needed.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("real containers need root".into());
    }
    for tool in ["podman", RUNC] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "`{tool}` is not installed (apt-get install podman runc)"
            ));
        }
    }
    let ldd = Command::new("sh")
        .args(["-c", "ldd /bin/busybox 2>&1"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !Path::new("/bin/busybox").exists() || !ldd.contains("not a dynamic executable") {
        return Some("a static /bin/busybox is missing (apt-get install busybox-static)".into());
    }
    None
}

/// Runs podman (with runc); stdout, trimmed. Panics with podman's stderr on failure.
pub fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .arg("--runtime")
        .arg(RUNC)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One test's image and containers.
pub struct Podman {
    /// The image's tag (`localhost/driftwatch-e2e-…:1`).
    pub image: String,
    prefix: String,
    containers: Vec<String>,
}

impl Podman {
    /// Imports an image of busybox and a few applets, tagged with `label` (unique per
    /// test in this process).
    pub fn import(label: &str) -> Podman {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "etc", "tmp", "usr/local/bin"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "echo", "chmod", "mv"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(rootfs.join("etc/motd"), "welcome\n").unwrap();
        let tarball = dir.path().join("image.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success(), "tar");
        let prefix = format!("dw-e2e-{}-{label}", std::process::id());
        let image = format!("localhost/{prefix}:1");
        podman(&["import", "-q", tarball.to_str().unwrap(), &image]);
        Podman {
            image,
            prefix,
            containers: Vec::new(),
        }
    }

    /// Starts a container of the image named `PREFIX-name` that sleeps; its id.
    pub fn run(&mut self, name: &str) -> String {
        let name = format!("{}-{name}", self.prefix);
        let id = podman(&[
            "run",
            "-d",
            "--name",
            &name,
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=4096:4096",
            "--network",
            "none",
            &self.image,
            "/bin/sleep",
            "600",
        ]);
        self.containers.push(id.clone());
        id
    }

    /// Runs a shell script inside container `id`.
    pub fn exec(&self, id: &str, script: &str) {
        podman(&["exec", id, "/bin/sh", "-c", script]);
    }

    /// Stops and removes container `id`.
    pub fn remove(&mut self, id: &str) {
        podman(&["rm", "-f", "-t", "0", id]);
        self.containers.retain(|c| c != id);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = Command::new("podman")
                .args(["rm", "-f", "-t", "0", id])
                .output();
        }
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}
