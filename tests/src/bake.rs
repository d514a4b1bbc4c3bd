//! Making an image as an image build does, for the tests that boot one
//! (`tests/tests/image.rs` under systemd-nspawn, `tests/tests/qemu.rs` under qemu): the
//! packages of a stock cloud image, the agent's `.deb` (built by `packaging/build.sh`),
//! installed with `dpkg -i` in a chroot, and the bake step (`driftwatch-bake`) last.

use crate::container::{self, last_lines, run_for, Cache, DebianSource, Root, Rootfs, RootfsSpec};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The agent's unit.
pub const UNIT: &str = "driftwatch.service";

/// The packages the image gets on top of `minbase`: what a stock cloud image carries
/// (a kernel with its modules and initramfs, cloud-init, sshd, time sync, automatic
/// upgrades, sudo), so that the test judges the image users bake.
pub const CLOUD_IMAGE: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "cloud-init",
    "openssh-server",
    "systemd-timesyncd",
    "unattended-upgrades",
    "sudo",
];
/// A small package (no dependencies beyond libc) kept as a `.deb` in the image's apt
/// cache, not installed: the drift step installs it offline.
pub const SPARE: &str = "hello";

/// What a boot test starts from.
pub struct Ingredients {
    /// `target/boot-cache/`.
    pub cache: Cache,
    /// The cached root file system of the cloud image ([`CLOUD_IMAGE`], with [`SPARE`]
    /// downloaded).
    pub rootfs: Rootfs,
    /// The agent's `.deb`.
    pub deb: PathBuf,
    /// How the `.deb` came to be, for the timings line.
    pub deb_how: String,
}

/// The prerequisites checked (root, the harness's tools and `tools`), the cache opened,
/// then the root file system and the agent's `.deb`, made side by side. `Err` says why
/// a boot test cannot run here (it skips, or fails under CI).
pub fn ingredients(tools: &[&str]) -> Result<Ingredients, String> {
    container::prerequisites(tools)?;
    let source = DebianSource::of_host()?;
    let cache = Cache::open();
    let (rootfs, deb) = std::thread::scope(|scope| {
        let deb = scope.spawn(|| agent_deb(&cache));
        let rootfs = cache.rootfs(&RootfsSpec {
            source: &source,
            include: CLOUD_IMAGE,
            download: &[SPARE],
        });
        (rootfs, deb.join().unwrap())
    });
    let (deb, deb_how) = deb?;
    Ok(Ingredients {
        rootfs: rootfs?,
        cache,
        deb,
        deb_how,
    })
}

/// The agent's `.deb`: `DRIFTWATCH_TEST_DEB`, or built by `packaging/build.sh
/// agent-deb`. `Err` (the test skips) when the script cannot run here.
fn agent_deb(cache: &Cache) -> Result<(PathBuf, String), String> {
    if let Some(deb) = std::env::var_os("DRIFTWATCH_TEST_DEB") {
        return Ok((PathBuf::from(deb), "given (DRIFTWATCH_TEST_DEB)".into()));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let script = workspace.join("packaging/build.sh");
    if !script.is_file() {
        return Err(format!("{} is missing", script.display()));
    }
    let building = Instant::now();
    let mut build = Command::new("bash");
    build.arg(&script).arg("agent-deb").current_dir(workspace);
    // What cargo set for this test (CARGO_PKG_NAME, CARGO_MANIFEST_DIR…) must not reach
    // the inner cargo: build scripts that watch those variables (ring's) would run again
    // and rebuild half the tree, here and again in the next build.sh run from a shell.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || ["CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&name.as_ref())
        {
            build.env_remove(name.as_ref());
        }
    }
    let out = run_for(&mut build, Duration::from_secs(3600));
    let log = cache.dir().join("agent-deb.build.log");
    std::fs::write(&log, out.to_string()).unwrap();
    if !out.success() && out.stderr.contains("cannot install them") {
        return Err(format!(
            "packaging/build.sh lacks its tools here: {}",
            last_lines(&out.stderr, 1)
        ));
    }
    if !out.success() {
        panic!(
            "packaging/build.sh agent-deb failed; log: {}\n{}",
            log.display(),
            last_lines(&format!("{}{}", out.stdout, out.stderr), 30)
        );
    }
    let deb = workspace.join(format!(
        "target/packages/driftwatch_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(deb.is_file(), "build.sh did not make {}", deb.display());
    Ok((deb, format!("build.sh in {:.1?}", building.elapsed())))
}

/// Installs the agent's package as an image build does: `dpkg -i` in a chroot.
pub fn install_package(image: &Root, deb: &Path) {
    let inside = "/tmp/driftwatch.deb";
    std::fs::copy(deb, image.join(inside)).unwrap();
    image.chroot(&["dpkg", "-i", inside]).ok();
    std::fs::remove_file(image.join(inside)).unwrap();
    let enabled = image.chroot(&["systemctl", "is-enabled", UNIT]);
    assert_eq!(
        enabled.stdout.trim(),
        "enabled",
        "the package should enable {UNIT}:{enabled}"
    );
    assert!(
        !image.join("/usr/lib/driftwatch/baseline").exists(),
        "installing the package must not make a baseline"
    );
}

/// The bake step, in a chroot: `driftwatch-bake` with the pipeline's key (copied into
/// the image's /tmp for the step, removed after).
pub fn bake(image: &Root, image_id: &str, sign_key: &Path, pubkey: &Path, options: &[&str]) {
    std::fs::copy(sign_key, image.join("/tmp/pipeline.key")).unwrap();
    std::fs::copy(pubkey, image.join("/tmp/pipeline.pub")).unwrap();
    // /proc in the chroot, as an image build's chroot has it: the scan reads extended
    // attributes through /proc/self/fd.
    let proc_dir = image.join("/proc");
    crate::ok(crate::run(
        Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(&proc_dir),
    ));
    let mut args = vec![
        "/usr/sbin/driftwatch-bake",
        "--image-id",
        image_id,
        "--sign-key",
        "/tmp/pipeline.key",
        "--pubkey",
        "/tmp/pipeline.pub",
    ];
    args.extend_from_slice(options);
    let baked = image.chroot(&args);
    crate::ok(crate::run(Command::new("umount").arg(&proc_dir)));
    std::fs::remove_file(image.join("/tmp/pipeline.key")).unwrap();
    std::fs::remove_file(image.join("/tmp/pipeline.pub")).unwrap();
    let baked = baked.ok();
    eprintln!("{}", baked.stdout.trim_end());
    let machine_id = std::fs::read(image.join("/etc/machine-id")).unwrap();
    assert!(
        machine_id.is_empty(),
        "the bake should empty /etc/machine-id"
    );
}

/// The user cloud-init creates on Debian (`default_user` of its `cloud.cfg`).
pub const DEFAULT_USER: &str = "debian";
/// Where the seed's `write_files` and `runcmd` write (declare them as provisioning
/// paths: `/etc/driftwatch-e2e` and below).
pub const WRITTEN: &str = "/etc/driftwatch-e2e/written";
pub const RAN: &str = "/etc/driftwatch-e2e/ran";

/// The NoCloud seed a cloud would hand machine `name` at first boot: the default user
/// with the SSH public key `key`, a file ([`WRITTEN`]), the hostname, a command
/// ([`RAN`]) and `more` commands. Written after the bake, into
/// `/var/lib/cloud/seed/nocloud` (cloud-init's own state, excluded by the policy).
pub fn seed_cloud_init(root: &Root, name: &str, key: &str, more: &[&str]) {
    let seed = "/var/lib/cloud/seed/nocloud";
    root.write(
        &format!("{seed}/meta-data"),
        format!("instance-id: iid-{name}\nlocal-hostname: {name}\n"),
        0o600,
    );
    let more: String = more
        .iter()
        .map(|command| format!("  - [sh, -c, \"{command}\"]\n"))
        .collect();
    root.write(
        &format!("{seed}/user-data"),
        format!(
            "#cloud-config\nhostname: {name}\nusers: [default]\n\
             ssh_authorized_keys: [\"{key}\"]\n\
             write_files:\n  - path: {WRITTEN}\n    content: \"provisioned\\n\"\n\
             runcmd:\n  - [sh, -c, \"echo ran > {RAN}\"]\n{more}"
        ),
        0o600,
    );
}
