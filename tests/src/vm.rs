//! Machines booted for real under qemu (`tests/tests/qemu.rs`): a [`Root`] made into
//! disks the way a cloud image is (`/` on one, a read-only `/usr` on another), booted
//! with the image's own kernel and initramfs, so that the kernel is the image's, its
//! modules are really loaded (`/proc/modules` lists them) and the mount table is a
//! machine's, not a container's.
//!
//! With a usable `/dev/kvm` the machine runs under KVM, otherwise under software
//! emulation (TCG, about ten times slower to boot): [`Accel`] says which, and the test
//! output names it. The test reaches the machine the way an operator reaches a cloud
//! host: over SSH, as the default user cloud-init made from the seed's key, with sudo.
//! The only network is qemu's user-mode one with `restrict=on`: nothing leaves the
//! machine but the forwarded SSH port on the outer machine's loopback.
//!
//! qemu dies with the test thread that started it (`PR_SET_PDEATHSIG`), so a killed
//! test run leaves no machine running; the disks live in the root's run directory and
//! go with it.

use crate::container::{last_lines, run_for, Out, Root};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long one command over SSH may take at most under KVM (see [`Accel::patience`]).
const SSH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a boot may take to reach SSH under KVM.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the machine may take to power off under KVM.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(90);
/// The machine's memory, in MiB.
const MEMORY_MIB: &str = "1024";

/// How the machine's CPU is provided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (`/dev/kvm`).
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// KVM when `/dev/kvm` can be opened for reading and writing and the CPU offers
    /// virtualisation (`vmx` or `svm` in `/proc/cpuinfo`), else TCG, with why. Both are
    /// needed: inside a virtual machine without nested virtualisation `/dev/kvm` may
    /// open, and a guest started on it hangs in its first instructions.
    pub fn detect() -> (Accel, String) {
        if let Err(err) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            return (Accel::Tcg, format!("/dev/kvm: {err}"));
        }
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .flat_map(str::split_whitespace);
        match flags.into_iter().find(|f| *f == "vmx" || *f == "svm") {
            Some(flag) => (
                Accel::Kvm,
                format!("/dev/kvm is usable, the CPU has {flag}"),
            ),
            None => (
                Accel::Tcg,
                "/dev/kvm opens but the CPU offers no vmx or svm (no nested virtualisation)".into(),
            ),
        }
    }

    /// qemu's arguments for it.
    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }

    /// `limit` (what a wait may take under KVM) stretched to this accelerator: software
    /// emulation runs guest code about ten times slower, and a loaded machine more, so
    /// every wait on the guest scales with it instead of failing a slow but working boot.
    pub fn patience(self, limit: Duration) -> Duration {
        match self {
            Accel::Kvm => limit,
            Accel::Tcg => limit * 10,
        }
    }

    /// How long a boot may take to reach SSH (and the agent a state after a boot or a
    /// re-check: two full checks at most).
    pub fn boot_limit(self) -> Duration {
        self.patience(BOOT_TIMEOUT)
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "qemu-kvm",
            Accel::Tcg => "qemu-tcg",
        })
    }
}

/// The image's kernel: `/boot/vmlinuz-RELEASE` and `/boot/initrd.img-RELEASE`.
pub struct Kernel {
    /// The kernel's release (`uname -r` on the booted machine).
    pub release: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// Its initramfs.
    pub initrd: PathBuf,
}

impl Kernel {
    /// The one kernel the image has in `/boot`, with its initramfs.
    pub fn of(root: &Root) -> Kernel {
        let release = fs::read_dir(root.join("/boot"))
            .unwrap()
            .flatten()
            .find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("vmlinuz-").map(str::to_string)
            })
            .expect("the image has a kernel in /boot");
        let kernel = Kernel {
            vmlinuz: root.join(&format!("/boot/vmlinuz-{release}")),
            initrd: root.join(&format!("/boot/initrd.img-{release}")),
            release,
        };
        assert!(
            kernel.initrd.is_file(),
            "the image's kernel has no initramfs: {}",
            kernel.initrd.display()
        );
        kernel
    }
}

/// The machine's disks: `/` and `/usr`, raw ext4 files in the run directory.
pub struct Disks {
    /// `/dev/vda`: the root file system, `/usr` an empty mount point.
    pub root: PathBuf,
    /// `/dev/vdb`: `/usr`.
    pub usr: PathBuf,
}

/// The `/etc/fstab` of an image made into [`Disks`]: `/usr` read-only.
pub const FSTAB: &str = "/dev/vda / ext4 errors=remount-ro 0 1\n/dev/vdb /usr ext4 ro 0 2\n";

impl Disks {
    /// Makes the disks from `root` (the image as baked; its `/etc/fstab` should be
    /// [`FSTAB`]) with `mkfs.ext4 -d`: `/usr` first, then `/` with an empty tmpfs
    /// mounted over its `/usr` for the time of the copy.
    pub fn make(root: &Root) -> Disks {
        let dir = root.run_dir();
        let disks = Disks {
            root: dir.join("root.raw"),
            usr: dir.join("usr.raw"),
        };
        mkfs(&disks.usr, &root.join("/usr"), "2G");
        let usr = root.join("/usr");
        crate::container::run_for(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "mode=0755", "driftwatch-usr"])
                .arg(&usr),
            Duration::from_secs(30),
        )
        .ok();
        mkfs(&disks.root, &root.path(), "2G");
        run_for(Command::new("umount").arg(&usr), Duration::from_secs(30)).ok();
        disks
    }
}

fn mkfs(image: &Path, from: &Path, size: &str) {
    let _ = fs::remove_file(image);
    run_for(
        Command::new("truncate").args(["-s", size]).arg(image),
        Duration::from_secs(30),
    )
    .ok();
    run_for(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
            .arg(from)
            .arg(image),
        Duration::from_secs(300),
    )
    .ok();
}

/// What a machine boots with.
pub struct VmSpec<'a> {
    /// Its name, for messages and file names.
    pub name: &'a str,
    /// Its disks.
    pub disks: &'a Disks,
    /// The kernel to boot.
    pub kernel: &'a Kernel,
    /// KVM or TCG.
    pub accel: Accel,
    /// The user to log in as, and the private key the seed gave that user.
    pub user: &'a str,
    /// The private key.
    pub key: &'a Path,
}

/// A machine running under qemu. Dropping it kills qemu if it still runs.
pub struct Vm {
    name: String,
    accel: Accel,
    qemu: Option<Child>,
    ssh_port: u16,
    user: String,
    key: PathBuf,
    dir: PathBuf,
    started: Instant,
}

impl Vm {
    /// Starts qemu (not waiting for the boot; see [`Vm::wait_ssh`]).
    pub fn boot(spec: &VmSpec<'_>) -> Vm {
        let dir = spec.disks.root.parent().unwrap().to_path_buf();
        let ssh_port = crate::free_port();
        let console = dir.join(format!("{}.console.log", spec.name));
        let monitor = dir.join(format!("{}.monitor.sock", spec.name));
        let _ = fs::remove_file(&monitor);
        let drive =
            |disk: &Path| format!("file={},format=raw,if=virtio,cache=unsafe", disk.display());
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(spec.accel.args())
            .args([
                "-m",
                MEMORY_MIB,
                "-smp",
                "2",
                "-nodefaults",
                "-display",
                "none",
            ])
            .arg("-kernel")
            .arg(&spec.kernel.vmlinuz)
            .arg("-initrd")
            .arg(&spec.kernel.initrd)
            .args([
                "-append",
                "root=/dev/vda ro console=ttyS0 panic=-1",
                "-drive",
                &drive(&spec.disks.root),
                "-drive",
                &drive(&spec.disks.usr),
                "-netdev",
                &format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"),
                "-device",
                "virtio-net-pci,netdev=n0",
                "-serial",
                &format!("file:{}", console.display()),
                "-monitor",
                &format!("unix:{},server,nowait", monitor.display()),
                "-no-reboot",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join(format!("{}.qemu.log", spec.name))).unwrap());
        // SAFETY: prctl(2) in the child between fork and exec, async-signal-safe.
        unsafe {
            qemu.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = qemu
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start qemu-system-x86_64: {e}"));
        Vm {
            name: spec.name.to_string(),
            accel: spec.accel,
            qemu: Some(child),
            ssh_port,
            user: spec.user.to_string(),
            key: spec.key.to_path_buf(),
            dir,
            started,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// KVM or TCG.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// How long since qemu was started for this boot.
    pub fn up_for(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until SSH lets the user in: how long after qemu started.
    pub fn wait_ssh(&mut self) -> Duration {
        let limit = self.accel.boot_limit();
        loop {
            if self
                .run(&["true"], self.accel.patience(Duration::from_secs(20)))
                .success()
            {
                return self.up_for();
            }
            if let Some(status) = self.qemu.as_mut().and_then(|q| q.try_wait().unwrap()) {
                self.fail(format!("qemu exited during the boot: {status}"));
            }
            if self.up_for() > limit {
                self.fail(format!("no SSH login after {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs `args` (a program and its arguments) as the user over SSH.
    pub fn exec(&self, args: &[&str]) -> Out {
        self.run(args, self.accel.patience(SSH_TIMEOUT))
    }

    /// Runs `args` as root (`sudo -n`) over SSH.
    pub fn sudo(&self, args: &[&str]) -> Out {
        let mut all = vec!["sudo", "-n"];
        all.extend_from_slice(args);
        self.run(&all, self.accel.patience(SSH_TIMEOUT))
    }

    /// [`Vm::sudo`]; a failure fails the test.
    pub fn sudo_ok(&self, args: &[&str]) -> Out {
        let out = self.sudo(args);
        if !out.success() {
            self.fail(format!("command failed on the machine:{out}"));
        }
        out
    }

    fn run(&self, args: &[&str], timeout: Duration) -> Out {
        run_for(
            Command::new("ssh")
                .args([
                    "-F",
                    "/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "LogLevel=ERROR",
                    "-o",
                    "ConnectTimeout=5",
                    "-i",
                ])
                .arg(&self.key)
                .arg("-p")
                .arg(self.ssh_port.to_string())
                .arg(format!("{}@127.0.0.1", self.user))
                .arg("--")
                .arg(remote_command(args)),
            timeout,
        )
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.join(format!("{}.console.log", self.name))).unwrap_or_default()
    }

    /// Fails the test with the message, the agent's journal when the machine answers,
    /// and the end of the console.
    pub fn fail(&self, message: impl fmt::Display) -> ! {
        let journal = self.run(
            &[
                "sudo",
                "-n",
                "journalctl",
                "-u",
                crate::bake::UNIT,
                "--boot",
                "--no-pager",
            ],
            self.accel.patience(Duration::from_secs(20)),
        );
        panic!(
            "{} ({}): {message}\n--- journalctl -u {} ---\n{}\n--- console (last 60 lines) ---\n{}",
            self.name,
            self.accel,
            crate::bake::UNIT,
            journal.stdout,
            last_lines(&self.console(), 60),
        );
    }

    /// Powers the machine off (`systemctl poweroff` inside; the monitor's
    /// `system_powerdown` if that does not work) and waits for qemu to exit: how long
    /// it took.
    pub fn shutdown(&mut self) -> Duration {
        let start = Instant::now();
        let _ = self.sudo(&["systemctl", "poweroff"]);
        let mut pressed = false;
        loop {
            let qemu = self.qemu.as_mut().expect("running");
            if let Some(status) = qemu.try_wait().unwrap() {
                self.qemu = None;
                if !status.success() {
                    panic!("{}: qemu exited with {status} at poweroff", self.name);
                }
                return start.elapsed();
            }
            let limit = self.accel.patience(POWEROFF_TIMEOUT);
            if !pressed && start.elapsed() > limit / 3 {
                self.monitor("system_powerdown");
                pressed = true;
            }
            if start.elapsed() > limit {
                self.fail(format!("the machine did not power off within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends one command to qemu's monitor.
    fn monitor(&self, command: &str) {
        let socket = self.dir.join(format!("{}.monitor.sock", self.name));
        if let Ok(mut stream) = UnixStream::connect(socket) {
            let _ = writeln!(stream, "{command}");
        }
    }
}

/// One command line for the remote shell, which SSH hands the words to joined with
/// spaces: each word quoted, so that it arrives as one argument.
fn remote_command(args: &[&str]) -> String {
    args.iter()
        .map(|arg| format!("'{}'", arg.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut qemu) = self.qemu.take() {
            let _ = qemu.kill();
            let _ = qemu.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_words_stay_words() {
        assert_eq!(
            remote_command(&["sh", "-c", "echo 'a b'; true"]),
            r"'sh' '-c' 'echo '\''a b'\''; true'"
        );
    }
}
