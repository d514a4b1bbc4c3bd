//! Machines booted for real from real images, for the end-to-end tests of the image
//! path (`tests/tests/image.rs`): a Debian root file system with systemd, built once
//! with `mmdebstrap` and cached as a tarball; copies of it on tmpfs, changed in a chroot
//! as an image build would change them; and `systemd-nspawn --boot` running the copies,
//! inspected from outside.
//!
//! Read [`Cache`] first (the cached root file system, and the cleanup after killed
//! runs), then [`Root`] (one copy to change) and [`Container`] (a copy booted). A
//! container has a network namespace of its own: sharing the outer machine's would show
//! the outer machine's listening sockets to the daemon's runtime check, which a machine
//! booted from the image would not have. [`Network::Bridge`] joins it to a [`Bridge`] on
//! the outer machine, so that a collector listening on the bridge is reachable from
//! inside.
//!
//! Everything cleans up when dropped, also while a failed test unwinds: containers are
//! powered off (killed if they do not stop), tmpfs copies unmounted and removed, bridges
//! deleted. What a killed test run left behind is removed by the next [`Cache::open`].
//!
//! Needs root, `systemd-nspawn` (systemd-container), `mmdebstrap`, `nsenter`
//! (util-linux) and `ip` (iproute2) — see [`prerequisites`] — and a Debian host whose
//! apt sources name a mirror ([`DebianSource::of_host`]): the image is the host's own
//! Debian release. A test prints `skipping: <reason>` when either is missing.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one command run inside a container or a chroot may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long building the root file system may take (one `mmdebstrap`: 20 s to 2 min).
const ROOTFS_BUILD_TIMEOUT: Duration = Duration::from_secs(1200);
/// The first two octets of the bridges' /24 networks.
const BRIDGE_NET: [u8; 2] = [10, 77];
/// Bridge names: `dwt-PID-N`, at most 15 characters (IFNAMSIZ).
const BRIDGE_PREFIX: &str = "dwt-";
/// Run directories under the cache: `run-PID-NAME-N`.
const RUN_PREFIX: &str = "run-";
/// Numbers run directories and bridges within one test process.
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------------------------------
// Commands.

/// A finished command: what ran, its exit code (`None`: killed after its timeout or by
/// a signal) and what it printed.
pub struct Out {
    /// The command line, for messages.
    pub command: String,
    /// The exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    /// Whether it exited with 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Itself, or a panic showing the whole command and its output.
    pub fn ok(self) -> Out {
        assert!(self.success(), "command failed:{self}");
        self
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "\n$ {}\nexit {code}", self.command)?,
            None => write!(f, "\n$ {}\nkilled (timeout or signal)", self.command)?,
        }
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if !text.trim().is_empty() {
                write!(f, "\n--- {name} ---\n{}", text.trim_end())?;
            }
        }
        Ok(())
    }
}

/// Runs `command` to completion (stdin empty, output captured), killing it after
/// `timeout`.
pub fn run_for(command: &mut Command, timeout: Duration) -> Out {
    let shown = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    // Both pipes are drained while the command runs: a full pipe would block it.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    Out {
        command: shown,
        code: status.and_then(|s| s.code()),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Prerequisites and the Debian release.

/// Says why a test cannot run here and lets it pass — except under CI (`CI=true`),
/// where `.ci/run` installed and started everything the test needs: a missing
/// prerequisite there is a failure, never a silent pass.
pub fn skip(reason: impl fmt::Display) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true: this test must run here, but: {reason}");
    }
    eprintln!("skipping: {reason}");
}

/// Why containers cannot be booted here, if they cannot: not root, or one of `tools`
/// (beyond those the harness always needs) is not on PATH.
pub fn prerequisites(tools: &[&str]) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (chroot, mounts, systemd-nspawn, bridges)".into());
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    let needed = [
        "systemd-nspawn",
        "mmdebstrap",
        "nsenter",
        "ip",
        "chroot",
        "tar",
    ];
    for tool in needed.iter().chain(tools) {
        if !std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()) {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    Ok(())
}

/// A Debian release and a mirror to build it from.
#[derive(Clone, Debug, PartialEq)]
pub struct DebianSource {
    /// The release's code name (`bookworm`).
    pub suite: String,
    /// A mirror URI.
    pub mirror: String,
}

impl DebianSource {
    /// The host's own Debian release (so that binaries built on the host run in the
    /// image) and a mirror for it, read from the host's apt sources: no host name is
    /// written in the tests.
    pub fn of_host() -> Result<DebianSource, String> {
        let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
        let field = |name: &str| {
            os_release.lines().find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('='))
                    .map(|value| value.trim_matches('"').to_string())
            })
        };
        let suite = match (field("ID").as_deref(), field("VERSION_CODENAME")) {
            (Some("debian"), Some(codename)) if !codename.is_empty() => codename,
            (id, _) => {
                return Err(format!(
                    "the image is built from the host's Debian release, and this host is \
                     not Debian with a release name (ID={})",
                    id.unwrap_or("?")
                ))
            }
        };
        let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
        if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
            let mut listed: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
            listed.sort();
            files.extend(listed);
        }
        for file in files {
            let Ok(text) = fs::read_to_string(&file) else {
                continue;
            };
            let name = file.to_string_lossy();
            let found = if name.ends_with(".sources") {
                deb822_mirror(&text, &suite)
            } else if name.ends_with(".list") {
                one_line_mirror(&text, &suite)
            } else {
                None
            };
            if let Some(mirror) = found {
                return Ok(DebianSource { suite, mirror });
            }
        }
        Err(format!(
            "no apt source on this host names a mirror for Debian {suite}"
        ))
    }
}

/// The first URI of a deb822 stanza of type `deb` for `suite`.
fn deb822_mirror(text: &str, suite: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| -> Vec<&str> {
            stanza
                .lines()
                .filter(|line| !line.starts_with('#'))
                .find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    key.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| value.split_whitespace().collect())
                })
                .unwrap_or_default()
        };
        let enabled = field("Enabled").first().is_none_or(|v| *v != "no");
        if enabled && field("Types").contains(&"deb") && field("Suites").contains(&suite) {
            if let Some(uri) = field("URIs").first() {
                return Some(uri.to_string());
            }
        }
    }
    None
}

/// The URI of a `deb [options] URI SUITE COMPONENTS…` line for `suite`.
fn one_line_mirror(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("deb ")?.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(options) => options.split_once(']')?.1,
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let uri = words.next()?;
        (words.next()? == suite).then(|| uri.to_string())
    })
}

// ---------------------------------------------------------------------------------------
// The cache.

/// `target/boot-cache/`: cached root file systems, and the run directories of the
/// copies in use.
pub struct Cache {
    dir: PathBuf,
}

/// What a root file system is made of.
pub struct RootfsSpec<'a> {
    /// Release and mirror.
    pub source: &'a DebianSource,
    /// Packages installed on top of `minbase`.
    pub include: &'a [&'a str],
    /// Packages only downloaded (with the release's dependencies resolved by nobody):
    /// their `.deb` files are kept next to the tarball, for installing offline later.
    pub download: &'a [&'a str],
}

/// A cached root file system.
pub struct Rootfs {
    /// The tarball (`mmdebstrap --format=tar`).
    pub tarball: PathBuf,
    /// The directory holding the downloaded `.deb` files.
    pub debs: PathBuf,
    /// How it came to be there (`cached`, `built in 21.3s`…), for the timings line.
    pub how: String,
}

impl Rootfs {
    /// The downloaded `.deb` of `package`.
    pub fn deb(&self, package: &str) -> Option<PathBuf> {
        let prefix = format!("{package}_");
        fs::read_dir(&self.debs).ok()?.flatten().find_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            (name.starts_with(&prefix) && name.ends_with(".deb")).then(|| entry.path())
        })
    }
}

impl Cache {
    /// `target/boot-cache/` (next to the test's own executable), created if missing;
    /// what killed test runs left behind is removed: containers still running, copies,
    /// their tmpfs mounts, bridges.
    pub fn open() -> Cache {
        let exe = std::env::current_exe().expect("current exe");
        // target/debug/deps/TEST-HASH -> target
        let target = exe
            .ancestors()
            .nth(3)
            .expect("the test executable lies in target/PROFILE/deps/");
        let dir = target.join("boot-cache");
        fs::create_dir_all(&dir).unwrap();
        remove_stale_runs(&dir);
        remove_stale_bridges();
        Cache { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The root file system of `spec`, built with mmdebstrap unless already cached.
    /// Builds are serialised by a lock file and written under temporary names, then
    /// renamed (the tarball last). `Err` when the mirror cannot be reached.
    pub fn rootfs(&self, spec: &RootfsSpec<'_>) -> Result<Rootfs, String> {
        let key = format!(
            "{}-{:016x}",
            spec.source.suite,
            fnv1a(&format!("{:?}|{:?}", spec.include, spec.download))
        );
        let tarball = self.dir.join(format!("{key}.tar"));
        let debs = self.dir.join(format!("{key}.debs"));
        let cached = |how: String| Rootfs {
            tarball: tarball.clone(),
            debs: debs.clone(),
            how,
        };
        if tarball.exists() {
            return Ok(cached("cached".into()));
        }
        let lock = File::create(self.dir.join(format!("{key}.lock"))).unwrap();
        let waiting = Instant::now();
        // SAFETY: flock(2) on a descriptor we own; released when `lock` is closed.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        if tarball.exists() {
            return Ok(cached(format!(
                "built by another test run (waited {:.1?})",
                waiting.elapsed()
            )));
        }
        let partial = self.dir.join(format!("{key}.partial.tar"));
        let partial_debs = self.dir.join(format!("{key}.partial.debs"));
        let _ = fs::remove_file(&partial);
        let _ = fs::remove_dir_all(&partial_debs);
        fs::create_dir_all(&partial_debs).unwrap();
        let log = self.dir.join(format!("{key}.build.log"));
        let DebianSource { suite, mirror } = spec.source;
        eprintln!(
            "building the {suite} root file system ({}; downloading {}) from {mirror} \
             (once; about 1-2 minutes)",
            spec.include.join(","),
            spec.download.join(",")
        );
        let building = Instant::now();
        let mut mmdebstrap = Command::new("mmdebstrap");
        mmdebstrap.args([
            "--variant=minbase",
            // dpkg without fsync: most of a build is dpkg on few cores.
            "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata",
            &format!("--include={}", spec.include.join(",")),
            "--format=tar",
        ]);
        if !spec.download.is_empty() {
            // apt-get on the outer machine, with mmdebstrap's configuration: the
            // release's package lists, only this once.
            mmdebstrap
                .env("DRIFTWATCH_DEBS", &partial_debs)
                .arg(format!(
                    "--customize-hook=cd \"$DRIFTWATCH_DEBS\" && \
                     APT_CONFIG=\"$MMDEBSTRAP_APT_CONFIG\" apt-get download {}",
                    spec.download.join(" ")
                ));
        }
        let out = run_for(
            mmdebstrap.arg(suite).arg(&partial).arg(mirror),
            ROOTFS_BUILD_TIMEOUT,
        );
        let took = building.elapsed();
        fs::write(&log, out.to_string()).unwrap();
        if !out.success() {
            let _ = fs::remove_file(&partial);
            let text = format!("{}{}", out.stdout, out.stderr);
            let tail = last_lines(&text, 30);
            const UNREACHABLE: [&str; 8] = [
                "Failed to fetch",
                "Could not resolve",
                "Temporary failure resolving",
                "Could not connect",
                "Unable to connect",
                "Connection timed out",
                "Network is unreachable",
                "No route to host",
            ];
            if UNREACHABLE.iter().any(|m| text.contains(m)) {
                return Err(format!(
                    "the root file system cannot be built: {mirror} is not reachable \
                     (log: {})\n{tail}",
                    log.display()
                ));
            }
            panic!(
                "mmdebstrap failed (exit {:?}); log: {}\n{tail}",
                out.code,
                log.display()
            );
        }
        let _ = fs::remove_dir_all(&debs);
        fs::rename(&partial_debs, &debs).unwrap();
        fs::rename(&partial, &tarball).unwrap();
        let rootfs = cached(format!("built in {took:.1?}"));
        for package in spec.download {
            assert!(
                rootfs.deb(package).is_some(),
                "mmdebstrap did not download {package} into {}; log: {}",
                debs.display(),
                log.display()
            );
        }
        Ok(rootfs)
    }

    /// A fresh, empty root directory under the cache, named after `name`.
    pub fn root(&self, name: &str) -> Root {
        Root::new(&self.dir, name)
    }
}

/// FNV-1a, 64 bits: a stable cache key (std's hasher may change between releases).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------
// A root file system copy.

/// A root file system being built or booted: `CACHE/run-PID-NAME-N/root`, on a tmpfs of
/// its own when one can be mounted (writing an image to disk takes from 0.5 to 10 s
/// here; to memory 0.5 s). Dropping it unmounts and removes it.
pub struct Root {
    dir: PathBuf,
}

impl Root {
    fn new(cache: &Path, name: &str) -> Root {
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let dir = cache.join(format!("{RUN_PREFIX}{}-{name}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let root = dir.join("root");
        fs::create_dir_all(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        if let Err(err) = mount_tmpfs(&root) {
            eprintln!("{name}: on disk: cannot mount a tmpfs: {err}");
        }
        Root { dir }
    }

    /// The root directory.
    pub fn path(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The host path of `rel` inside the root (`rel` may start with `/`).
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path().join(rel.trim_start_matches('/'))
    }

    /// The run directory holding the root (logs and per-boot files go beside it).
    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    /// Extracts `tarball` (as made by mmdebstrap: owners, modes and xattrs kept).
    pub fn extract(&self, tarball: &Path) {
        run_for(
            Command::new("tar")
                .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
                .arg(tarball)
                .arg("-C")
                .arg(self.path()),
            Duration::from_secs(300),
        )
        .ok();
    }

    /// Copies everything from `other` (owners, modes, links, xattrs kept).
    pub fn copy_from(&self, other: &Root) {
        run_for(
            Command::new("cp")
                .args(["-a", "--sparse=always"])
                .arg(format!("{}/.", other.path().display()))
                .arg(self.path()),
            Duration::from_secs(300),
        )
        .ok();
    }

    /// Writes a file inside the root with `mode`, creating parent directories.
    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>, mode: u32) {
        let path = self.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Runs a command in a chroot of the root, as an image build does.
    pub fn chroot(&self, args: &[&str]) -> Out {
        run_for(
            Command::new("chroot")
                .arg(self.path())
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            Duration::from_secs(300),
        )
    }
}

impl Root {
    /// A root that owns nothing: what a rebooted [`Container`] leaves behind when its
    /// real root moves on to the next boot.
    fn detached() -> Root {
        Root {
            dir: PathBuf::new(),
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            remove_run_dir(&self.dir);
        }
    }
}

/// Gives the root an empty stand-in for every kernel module the host has loaded (under
/// `/usr/lib/modules/RELEASE/`): a container runs the host's kernel, whose modules the
/// image does not ship (a real image ships its own kernel's), and the runtime check
/// should judge the image as one made for this kernel. Nothing to do on a kernel without
/// modules.
pub fn stand_in_kernel_modules(root: &Root) {
    let Ok(modules) = fs::read_to_string("/proc/modules") else {
        return;
    };
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let dir = root.join(&format!("usr/lib/modules/{}/kernel/host", release.trim()));
    fs::create_dir_all(&dir).unwrap();
    for name in modules.lines().filter_map(|l| l.split_whitespace().next()) {
        fs::write(dir.join(format!("{name}.ko")), b"").unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Networks.

/// A Linux bridge on the outer machine with a /24 of `10.77.0.0/16` and the first
/// address of it (the outer machine's side: a collector listens there). Deleted on drop.
pub struct Bridge {
    name: String,
    subnet: u8,
}

impl Bridge {
    /// Creates a bridge on a /24 no route of the outer machine covers yet.
    pub fn create() -> Result<Bridge, String> {
        let routes = run_for(
            Command::new("ip").args(["-4", "-o", "route", "show", "table", "all"]),
            COMMAND_TIMEOUT,
        );
        if !routes.success() {
            return Err(format!("cannot list routes:{routes}"));
        }
        let start = std::process::id() % 200;
        let subnet = (0..200)
            .map(|i| ((start + i) % 200 + 20) as u8)
            .find(|n| {
                let prefix = format!("{}.{}.{n}.", BRIDGE_NET[0], BRIDGE_NET[1]);
                !routes.stdout.contains(&prefix)
            })
            .ok_or("no free /24 left in 10.77.0.0/16")?;
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let bridge = Bridge {
            name: format!("{BRIDGE_PREFIX}{}-{n}", std::process::id()),
            subnet,
        };
        let gateway = format!("{}/24", bridge.gateway());
        for args in [
            &["link", "add", &bridge.name, "type", "bridge"][..],
            &["addr", "add", &gateway, "dev", &bridge.name],
            &["link", "set", &bridge.name, "up"],
        ] {
            let out = run_for(Command::new("ip").args(args), COMMAND_TIMEOUT);
            if !out.success() {
                return Err(format!("cannot set up bridge {}:{out}", bridge.name));
            }
        }
        Ok(bridge)
    }

    /// Its interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The outer machine's address on it (`10.77.N.1`).
    pub fn gateway(&self) -> Ipv4Addr {
        self.address(1)
    }

    /// Address `host` of its /24.
    pub fn address(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(BRIDGE_NET[0], BRIDGE_NET[1], self.subnet, host)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let out = run_for(
            Command::new("ip").args(["link", "del", &self.name]),
            COMMAND_TIMEOUT,
        );
        if !out.success() {
            eprintln!("cannot delete bridge {}:{out}", self.name);
        }
    }
}

/// How a container is networked.
pub enum Network<'a> {
    /// Its own namespace with loopback only.
    Private,
    /// A veth pair whose outer end joins `bridge`; inside, `host0` gets `address`/24
    /// from a `.network` file under `/run/systemd/network/` (where netplan and
    /// cloud-init put generated configuration: nothing in the image changes). The image
    /// must run systemd-networkd.
    Bridge {
        /// The bridge.
        bridge: &'a Bridge,
        /// The container's address on it.
        address: Ipv4Addr,
    },
}

// ---------------------------------------------------------------------------------------
// The container.

/// A [`Root`] booted with `systemd-nspawn --boot`. Dropping it powers the container off
/// (killing it if it does not stop), then removes the copy.
pub struct Container {
    name: String,
    /// The unit the test is about: a failure shows its status and journal.
    unit: String,
    nspawn: Option<Child>,
    /// The container's PID 1, as seen from the host.
    init: i32,
    /// The container's network namespace.
    netns: File,
    /// CLOCK_MONOTONIC when nspawn was started (the container shares the clock).
    started: Duration,
    // Last: dropped after nspawn has stopped.
    root: Root,
}

impl Container {
    /// Boots `root` as machine `name` and waits for its systemd to exist (not for the
    /// boot to finish). `unit` is the unit a failure should show.
    pub fn boot(root: Root, name: &str, unit: &str, network: Network<'_>) -> Container {
        let console = File::create(root.run_dir().join("console.log")).unwrap();
        let mut nspawn = Command::new("systemd-nspawn");
        nspawn
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .arg("--directory")
            .arg(root.path())
            .arg(format!("--machine={name}"))
            // No system bus on this host: no registration, and no scope of our own.
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--console=read-only",
            ]);
        match network {
            Network::Private => {
                nspawn.arg("--private-network");
            }
            Network::Bridge { bridge, address } => {
                let dir = root.run_dir().join("network");
                fs::create_dir_all(&dir).unwrap();
                // No link-local addressing and no router advertisements: otherwise
                // systemd-networkd-wait-online holds the boot for ~14 s.
                fs::write(
                    dir.join("10-host0.network"),
                    format!(
                        "[Match]\nName=host0\n\n[Network]\nAddress={address}/24\n\
                         LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
                    ),
                )
                .unwrap();
                nspawn
                    .arg(format!("--network-bridge={}", bridge.name()))
                    .arg(format!("--bind-ro={}:/run/systemd/network", dir.display()));
            }
        }
        let started = monotonic();
        let child = nspawn
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start systemd-nspawn: {e}"));
        let nspawn_pid = child.id() as i32;
        fs::write(root.run_dir().join("nspawn.pid"), nspawn_pid.to_string()).unwrap();
        let mut nspawn = Some(child);
        let looking = Instant::now();
        let found = loop {
            if let Some(pid) = child_named(nspawn_pid, "systemd") {
                break Ok(pid);
            }
            if let Some(status) = nspawn.as_mut().unwrap().try_wait().unwrap() {
                break Err(format!("systemd-nspawn exited at boot: {status}"));
            }
            if looking.elapsed() > Duration::from_secs(30) {
                break Err("no systemd below systemd-nspawn after 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let netns = found.and_then(|init| {
            let netns = File::open(format!("/proc/{init}/ns/net"))
                .map_err(|e| format!("cannot open the container's netns: {e}"))?;
            let probe = netns.try_clone().unwrap();
            std::thread::spawn(move || join_netns(&probe))
                .join()
                .unwrap()
                .map_err(|e| format!("cannot join the container's network namespace: {e}"))?;
            Ok((init, netns))
        });
        match netns {
            Ok((init, netns)) => Container {
                name: name.to_string(),
                unit: unit.to_string(),
                nspawn,
                init,
                netns,
                started,
                root,
            },
            Err(message) => {
                if let Some(child) = nspawn.take() {
                    stop_nspawn(child, None);
                }
                let console = fs::read_to_string(root.run_dir().join("console.log"));
                panic!(
                    "{name}: {message}\n--- console ---\n{}",
                    console.unwrap_or_default()
                );
            }
        }
    }

    /// How long since nspawn was started for this boot.
    pub fn up_for(&self) -> Duration {
        monotonic().saturating_sub(self.started)
    }

    /// Its machine name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its root file system (also readable from outside while it runs).
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// Runs a command inside the container (all its namespaces). The command is, for an
    /// instant, the outer machine's `nsenter` inside the container: a runtime check at
    /// that moment would rightly report it.
    pub fn exec(&self, args: &[&str]) -> Out {
        run_for(
            Command::new("nsenter")
                .args(["-t", &self.init.to_string(), "-a"])
                .args(args),
            COMMAND_TIMEOUT,
        )
    }

    /// Runs a command inside the container; a failure fails the test.
    pub fn exec_ok(&self, args: &[&str]) -> Out {
        let out = self.exec(args);
        if !out.success() {
            self.fail(format!("command failed in the container:{out}"));
        }
        out
    }

    /// GET `path` on `127.0.0.1:PORT` inside the container's network namespace:
    /// (status code, body), or `None` while nothing answers. No process is started in
    /// the container: a thread of the test joins its network namespace.
    pub fn get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        let netns = self.netns.try_clone().ok()?;
        let path = path.to_string();
        std::thread::spawn(move || {
            join_netns(&netns).ok()?;
            crate::http_get(port, &path)
        })
        .join()
        .ok()
        .flatten()
    }

    /// How long after nspawn started systemd called `unit` active (from systemd's own
    /// record, so without polling from outside), if it is.
    pub fn active_after(&self, unit: &str) -> Option<Duration> {
        let out = self.exec(&[
            "systemctl",
            "show",
            "--property=ActiveEnterTimestampMonotonic",
            unit,
        ]);
        let micros: u64 = out
            .stdout
            .trim()
            .strip_prefix("ActiveEnterTimestampMonotonic=")?
            .parse()
            .ok()?;
        (micros > 0).then(|| Duration::from_micros(micros).saturating_sub(self.started))
    }

    /// Waits until systemd reports `unit` active; `failed` is a failure at once.
    pub fn wait_active(&self, unit: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let out = self.exec(&["systemctl", "is-active", unit]);
            match out.stdout.trim() {
                "active" => return,
                "failed" => self.fail(format!("{unit} failed to start")),
                _ if start.elapsed() > limit => {
                    self.fail(format!("{unit} not active after {limit:?}:{out}"))
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// `journalctl -u UNIT` for this boot.
    pub fn journal(&self, unit: &str) -> String {
        let out = self.exec(&[
            "journalctl",
            &format!("--unit={unit}"),
            "--boot",
            "--no-pager",
            "--output=short-precise",
        ]);
        format!("{}{}", out.stdout, out.stderr)
    }

    /// The console (boot messages) so far.
    pub fn console(&self) -> String {
        fs::read_to_string(self.root.run_dir().join("console.log")).unwrap_or_default()
    }

    /// Fails the test with the unit's status and journal and the end of the console.
    pub fn fail(&self, message: impl fmt::Display) -> ! {
        let (status, journal) = if self.running() {
            let status = self.exec(&["systemctl", "status", "--no-pager", "--lines=0", &self.unit]);
            (status.stdout, self.journal(&self.unit))
        } else {
            (String::new(), "(the container is not running)".into())
        };
        panic!(
            "{}: {message}\n--- systemctl status {unit} ---\n{status}\n\
             --- journalctl -u {unit} ---\n{journal}\n--- console (last 60 lines) ---\n{}",
            self.name,
            last_lines(&self.console(), 60),
            unit = self.unit,
        );
    }

    /// Whether nspawn still runs.
    pub fn running(&self) -> bool {
        self.nspawn
            .as_ref()
            .is_some_and(|child| alive(child.id() as i32))
    }

    /// Powers the container off and boots the same root again (a reboot of the same
    /// machine: its disk is kept), on `network`. Returns how long the poweroff took.
    pub fn reboot(&mut self, network: Network<'_>) -> Duration {
        let took = self.shutdown();
        let root = std::mem::replace(&mut self.root, Root::detached());
        let (name, unit) = (self.name.clone(), self.unit.clone());
        *self = Container::boot(root, &name, &unit, network);
        took
    }

    /// `systemctl poweroff` inside, then waits for nspawn to exit cleanly: how long it
    /// took.
    pub fn shutdown(&mut self) -> Duration {
        let start = Instant::now();
        let _ = self.exec(&["systemctl", "poweroff"]);
        let status = loop {
            if let Some(status) = self.nspawn.as_mut().expect("booted").try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(30) {
                self.fail("the container did not power off within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.nspawn = None;
        if !status.success() {
            self.fail(format!(
                "systemd-nspawn exited with {status} after poweroff"
            ));
        }
        start.elapsed()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(child) = self.nspawn.take() {
            stop_nspawn(child, Some(self.init));
        }
    }
}

/// SIGTERM to nspawn (it powers the container off), SIGKILL to the container's init
/// and nspawn after 20 s.
fn stop_nspawn(mut child: Child, init: Option<i32>) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if matches!(child.try_wait(), Ok(None)) {
        eprintln!("a container did not stop on SIGTERM: killing it");
        if let Some(init) = init {
            // SAFETY: kill(2); killing a PID namespace's init kills the namespace.
            unsafe { libc::kill(init, libc::SIGKILL) };
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// CLOCK_MONOTONIC now.
fn monotonic() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes into a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Moves the calling thread into the network namespace `netns` (only this thread).
fn join_netns(netns: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on a namespace descriptor we own; it affects this thread only.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}

/// A child of `parent` whose command name is `name`.
fn child_named(parent: i32, name: &str) -> Option<i32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
        // `pid (comm) state ppid …`; comm may contain spaces and parentheses.
        let (head, tail) = stat.rsplit_once(") ")?;
        let comm = head.split_once(" (")?.1;
        let ppid: i32 = tail.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent && comm == name).then_some(pid)
    })
}

// ---------------------------------------------------------------------------------------
// Mounts and cleanup.

/// Mounts a tmpfs (no size limit beyond the default half of memory) on `dir`.
fn mount_tmpfs(dir: &Path) -> std::io::Result<()> {
    let target = CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"driftwatch-boot".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"mode=0755".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The mount points listed in this mount namespace.
fn mount_points() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
        .collect()
}

/// Removes a run directory (unmounting its root's tmpfs first) unless something else
/// is mounted below it (a container that escaped teardown): deleting through a mount
/// could reach outside the copy.
fn remove_run_dir(dir: &Path) {
    let root = dir.join("root").display().to_string();
    if mount_points().contains(&root) {
        let target = CString::new(root.as_bytes()).unwrap_or_default();
        // SAFETY: umount2(2) on a NUL-terminated path; MNT_DETACH never blocks.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!("cannot unmount {root}: {}", std::io::Error::last_os_error());
        }
    }
    let prefix = format!("{}/", dir.display());
    if mount_points().iter().any(|m| m.starts_with(&prefix)) {
        eprintln!(
            "not removing {}: something is mounted below it",
            dir.display()
        );
        return;
    }
    if let Err(err) = fs::remove_dir_all(dir) {
        eprintln!("cannot remove {}: {err}", dir.display());
    }
}

/// The test process a run directory or bridge name (`PREFIX PID -…`) belongs to.
fn owner(name: &str, prefix: &str) -> Option<i32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// Removes copies left by test processes that no longer exist (killed mid-run), after
/// stopping a container still running from one.
fn remove_stale_runs(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner(&name, RUN_PREFIX) else {
            continue;
        };
        if alive(pid) {
            continue;
        }
        let nspawn = fs::read_to_string(entry.path().join("nspawn.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok())
            .filter(|pid| {
                // Only if that pid is still the nspawn running this copy.
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                cmdline.starts_with("systemd-nspawn\0")
                    && cmdline.contains(&*entry.path().to_string_lossy())
            });
        if let Some(pid) = nspawn {
            eprintln!("stopping a container left running by a killed test (pid {pid})");
            // SAFETY: kill(2) on a process checked above to be that container's nspawn.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let start = Instant::now();
            while alive(pid) && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(pid) {
                eprintln!("not removing {name}: its container still runs");
                continue;
            }
        }
        remove_run_dir(&entry.path());
    }
}

/// Deletes bridges made by test processes that no longer exist.
fn remove_stale_bridges() {
    let out = run_for(
        Command::new("ip").args(["-o", "link", "show", "type", "bridge"]),
        COMMAND_TIMEOUT,
    );
    // `7: dwt-123-0: <BROADCAST,…> …`
    for name in out
        .stdout
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name))
    {
        if owner(name, BRIDGE_PREFIX).is_some_and(|pid| !alive(pid)) {
            eprintln!("deleting bridge {name}, left by a killed test");
            let _ = run_for(
                Command::new("ip").args(["link", "del", name]),
                COMMAND_TIMEOUT,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deb822_source_names_its_mirror_for_the_suite() {
        let text = "Types: deb\nURIs: http://deb.example.org/debian\nSuites: bookworm \
                    bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: \
                    http://security.example.org/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            deb822_mirror(text, "bookworm").as_deref(),
            Some("http://deb.example.org/debian")
        );
        assert_eq!(deb822_mirror(text, "trixie"), None);
        let disabled = "Enabled: no\nTypes: deb\nURIs: http://a/\nSuites: bookworm\n";
        assert_eq!(deb822_mirror(disabled, "bookworm"), None);
    }

    #[test]
    fn a_one_line_source_names_its_mirror_for_the_suite() {
        let text = "# deb http://old/ bookworm main\n\
                    deb-src http://src/ bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://deb.example.org/debian bookworm main\n";
        assert_eq!(
            one_line_mirror(text, "bookworm").as_deref(),
            Some("http://deb.example.org/debian")
        );
        assert_eq!(one_line_mirror(text, "trixie"), None);
    }

    #[test]
    fn run_and_bridge_names_carry_their_owner() {
        assert_eq!(owner("run-1234-image-0", RUN_PREFIX), Some(1234));
        assert_eq!(owner("dwt-99-3", BRIDGE_PREFIX), Some(99));
        assert_eq!(owner("bookworm-0123.tar", RUN_PREFIX), None);
        assert_eq!(owner("docker0", BRIDGE_PREFIX), None);
        assert!(format!("{BRIDGE_PREFIX}{}-{}", 4_194_304, 99).len() <= 15);
    }
}
