//! What the container runtimes record on disk about their containers: names, images,
//! Kubernetes pods, labels and mounts, keyed by the host path where each container's
//! root file system is mounted. Read-only and without any runtime's API socket.
//!
//! - **podman and CRI-O** (containers/storage): `overlay-containers/containers.json`
//!   (id, names, image id, layer, image name) and each container's OCI runtime spec,
//!   `overlay-containers/ID/userdata/config.json` (annotations, mounts, root path).
//! - **containerd** (Kubernetes through CRI, and Docker's own containerd): the OCI
//!   bundles of running tasks, `io.containerd.runtime.v2.task/NAMESPACE/ID/config.json`,
//!   whose annotations (`io.kubernetes.cri.*`) name the pod, namespace, container and
//!   image.
//! - **Docker**: `containers/ID/config.v2.json` (name, image, image id, labels, mount
//!   points) and `image/DRIVER/layerdb/mounts/ID/mount-id` (where its root is mounted).
//!
//! Every file is hostile input: a file that is too large, unreadable or malformed is an
//! error naming it, and the other containers are still described. Only the few fields
//! used are parsed (a small serde struct each; the full OCI spec types would add a
//! large dependency for five fields).

use super::ContainerMeta;
use driftwatch_protocol::report::ContainerRef;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Metadata files larger than this are refused (a spec is a few KiB; Docker's
/// `containers.json` grows by about 1 KiB per container).
const MAX_METADATA_BYTES: u64 = 32 * 1024 * 1024;

/// Where each runtime keeps its state, relative to the host's root.
#[derive(Clone, Debug)]
pub struct StateDirs {
    /// containers/storage (podman, CRI-O).
    pub containers_storage: PathBuf,
    /// Docker.
    pub docker: PathBuf,
    /// containerd's task bundles.
    pub containerd_tasks: Vec<PathBuf>,
}

impl StateDirs {
    /// The runtimes' default locations below `root` (`/` on a host).
    pub fn under(root: &Path) -> StateDirs {
        StateDirs {
            containers_storage: root.join("var/lib/containers/storage"),
            docker: root.join("var/lib/docker"),
            containerd_tasks: vec![
                root.join("run/containerd/io.containerd.runtime.v2.task"),
                root.join("run/docker/containerd/daemon/io.containerd.runtime.v2.task"),
            ],
        }
    }
}

/// The runtimes' metadata, by the host path of each container's root mount.
#[derive(Debug, Default)]
pub struct RuntimeState {
    /// Container descriptions by merged root mount point.
    pub by_root: HashMap<PathBuf, ContainerMeta>,
    /// Metadata that could not be read.
    pub errors: Vec<String>,
}

/// Reads every runtime's metadata below `dirs`. A runtime that is not installed is
/// simply absent.
pub fn read(dirs: &StateDirs) -> RuntimeState {
    let mut state = RuntimeState::default();
    read_containers_storage(&dirs.containers_storage, &mut state);
    for tasks in &dirs.containerd_tasks {
        read_containerd(tasks, &mut state);
    }
    // Docker last: its own names win over its containerd bundle's.
    read_docker(&dirs.docker, &mut state);
    state
}

fn read_limited(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot read {}: {err}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        return Err(format!(
            "{} is larger than {MAX_METADATA_BYTES} bytes; not read",
            path.display()
        ));
    }
    Ok(Some(bytes))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, errors: &mut Vec<String>) -> Option<T> {
    match read_limited(path) {
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(value) => Some(value),
            Err(err) => {
                errors.push(format!("{} is malformed: {err}", path.display()));
                None
            }
        },
        Ok(None) => None,
        Err(err) => {
            errors.push(err);
            None
        }
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

/// The parts of an OCI runtime spec (`config.json`) used here.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OciSpec {
    root: Option<OciRoot>,
    annotations: BTreeMap<String, String>,
    mounts: Vec<OciMount>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OciRoot {
    path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OciMount {
    destination: String,
}

impl OciSpec {
    /// The root's host path: absolute, or relative to the bundle.
    fn root_in(&self, bundle: &Path) -> Option<PathBuf> {
        let path = &self.root.as_ref()?.path;
        (!path.is_empty()).then(|| bundle.join(path))
    }

    fn mounts(&self) -> Vec<Vec<u8>> {
        self.mounts
            .iter()
            .filter(|m| m.destination.starts_with('/') && m.destination != "/")
            .map(|m| m.destination.trim_end_matches('/').as_bytes().to_vec())
            .collect()
    }

    fn annotation(&self, names: &[&str]) -> Option<String> {
        names
            .iter()
            .find_map(|name| self.annotations.get(*name))
            .filter(|value| !value.is_empty())
            .cloned()
    }

    /// Kubernetes names from the annotations CRI runtimes set (containerd's
    /// `io.kubernetes.cri.*`, CRI-O's `io.kubernetes.*`).
    fn kubernetes(&self, reference: &mut ContainerRef) {
        if let Some(name) = self.annotation(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ]) {
            reference.name = Some(name);
        }
        if let Some(pod) =
            self.annotation(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"])
        {
            reference.pod = Some(pod);
        }
        if let Some(namespace) = self.annotation(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ]) {
            reference.namespace = Some(namespace);
        }
        if let Some(image) = self.annotation(&[
            "io.kubernetes.cri.image-name",
            "io.kubernetes.cri-o.ImageName",
        ]) {
            reference.image = Some(image);
        }
        if let Some(digest) = self.annotation(&["io.kubernetes.cri-o.ImageRef"]) {
            reference.image_digest = Some(digest_of(&digest));
        }
    }

    /// The container this spec describes, named by `reference`.
    fn meta(&self, reference: ContainerRef) -> ContainerMeta {
        ContainerMeta {
            reference,
            labels: self.labels(),
            mounts: self.mounts(),
        }
    }

    /// Labels: the annotations themselves, plus CRI-O's JSON-encoded pod labels.
    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.annotations.clone();
        if let Some(encoded) = self.annotations.get("io.kubernetes.cri-o.Labels") {
            if let Ok(pod_labels) = serde_json::from_str::<BTreeMap<String, String>>(encoded) {
                labels.extend(pod_labels);
            }
        }
        labels
    }
}

/// `sha256:…` from an image reference that may carry a repository
/// (`docker.io/x@sha256:…`) or be a bare id.
fn digest_of(reference: &str) -> String {
    let digest = reference.rsplit('@').next().unwrap_or(reference);
    if digest.contains(':') {
        digest.to_string()
    } else {
        format!("sha256:{digest}")
    }
}

/// One record of containers/storage's `containers.json`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StorageContainer {
    id: String,
    names: Vec<String>,
    image: String,
    layer: String,
    metadata: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StorageMetadata {
    #[serde(rename = "image-name")]
    image_name: String,
}

fn read_containers_storage(storage: &Path, state: &mut RuntimeState) {
    let index = storage.join("overlay-containers/containers.json");
    let Some(records) = read_json::<Vec<StorageContainer>>(&index, &mut state.errors) else {
        return;
    };
    for record in records
        .into_iter()
        .filter(|r| is_id(&r.id) && is_id(&r.layer))
    {
        let userdata = storage
            .join("overlay-containers")
            .join(&record.id)
            .join("userdata");
        let spec: OciSpec =
            read_json(&userdata.join("config.json"), &mut state.errors).unwrap_or_default();
        let metadata: StorageMetadata = serde_json::from_str(&record.metadata).unwrap_or_default();
        let libpod = spec
            .annotations
            .get("io.container.manager")
            .map(String::as_str)
            == Some("libpod");
        let crio = !libpod
            && spec
                .annotations
                .keys()
                .any(|k| k.starts_with("io.kubernetes.pod."));
        let mut reference = ContainerRef {
            id: record.id.clone(),
            name: record.names.first().cloned(),
            runtime: if crio { "cri-o" } else { "podman" }.to_string(),
            image: (!metadata.image_name.is_empty()).then_some(metadata.image_name),
            image_digest: is_id(&record.image).then(|| format!("sha256:{}", record.image)),
            pod: None,
            namespace: None,
        };
        spec.kubernetes(&mut reference);
        let root = spec
            .root_in(&userdata)
            .unwrap_or_else(|| storage.join("overlay").join(&record.layer).join("merged"));
        state.by_root.insert(root, spec.meta(reference));
    }
}

fn read_containerd(tasks: &Path, state: &mut RuntimeState) {
    for namespace_dir in subdirs(tasks) {
        let namespace = namespace_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for bundle in subdirs(&namespace_dir) {
            let Some(id) = bundle.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let Some(spec) = read_json::<OciSpec>(&bundle.join("config.json"), &mut state.errors)
            else {
                continue;
            };
            let mut reference = ContainerRef {
                id,
                runtime: if namespace == "moby" {
                    "docker"
                } else {
                    "containerd"
                }
                .to_string(),
                ..ContainerRef::default()
            };
            spec.kubernetes(&mut reference);
            let root = spec
                .root_in(&bundle)
                .unwrap_or_else(|| bundle.join("rootfs"));
            state.by_root.insert(root, spec.meta(reference));
        }
    }
}

/// The parts of Docker's `config.v2.json` used here.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DockerContainer {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Image")]
    image: String,
    #[serde(rename = "Driver")]
    driver: String,
    #[serde(rename = "Config")]
    config: DockerConfig,
    #[serde(rename = "MountPoints")]
    mount_points: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DockerConfig {
    #[serde(rename = "Image")]
    image: String,
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

fn read_docker(docker: &Path, state: &mut RuntimeState) {
    for dir in subdirs(&docker.join("containers")) {
        let Some(record) =
            read_json::<DockerContainer>(&dir.join("config.v2.json"), &mut state.errors)
        else {
            continue;
        };
        if !is_id(&record.id) || !is_name(&record.driver) {
            continue;
        }
        let mount_id_file = docker
            .join("image")
            .join(&record.driver)
            .join("layerdb/mounts")
            .join(&record.id)
            .join("mount-id");
        let mount_id = match read_limited(&mount_id_file) {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).trim().to_string(),
            Ok(None) => continue,
            Err(err) => {
                state.errors.push(err);
                continue;
            }
        };
        if !is_id(&mount_id) {
            state
                .errors
                .push(format!("{} is malformed", mount_id_file.display()));
            continue;
        }
        let root = docker.join(&record.driver).join(&mount_id).join("merged");
        let labels = record.config.labels.clone().unwrap_or_default();
        let mut reference = ContainerRef {
            id: record.id.clone(),
            name: Some(record.name.trim_start_matches('/').to_string()).filter(|n| !n.is_empty()),
            runtime: "docker".to_string(),
            image: Some(record.config.image.clone()).filter(|i| !i.is_empty()),
            image_digest: Some(digest_of(&record.image)).filter(|_| !record.image.is_empty()),
            pod: labels.get("io.kubernetes.pod.name").cloned(),
            namespace: labels.get("io.kubernetes.pod.namespace").cloned(),
        };
        if let Some(name) = labels.get("io.kubernetes.container.name") {
            reference.name = Some(name.clone());
        }
        let mut mounts: Vec<Vec<u8>> = record
            .mount_points
            .keys()
            .filter(|d| d.starts_with('/') && d.as_str() != "/")
            .map(|d| d.trim_end_matches('/').as_bytes().to_vec())
            .collect();
        // The files Docker bind-mounts into every container.
        mounts.extend(
            ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]
                .iter()
                .map(|p| p.as_bytes().to_vec()),
        );
        let previous = state.by_root.remove(&root);
        state.by_root.insert(
            root,
            ContainerMeta {
                reference,
                labels,
                mounts: previous
                    .map(|p| {
                        let mut all = p.mounts;
                        all.extend(mounts.iter().cloned());
                        all
                    })
                    .unwrap_or(mounts),
            },
        );
    }
}

/// A runtime's id: hex digits (or the few other characters layer ids use), never a
/// path component that could lead elsewhere.
fn is_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A storage driver name (`overlay2`).
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_ID: &str = "3f9a8c2d1e4b5a6978c0d1e2f3a4b5c6d7e8f90123456789abcdef0123456789";
    const MOUNT_ID: &str = "8e1b3c7a9d2f4e6b0a1c3d5e7f9b2a4c6e8d0f1a3b5c7d9e2f4a6b8c0d1e3f5a";
    const CRI_ID: &str = "b7c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1";

    fn fixture(dir: &Path, path: &str, text: &str) {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// Docker 24's `config.v2.json` (fields trimmed to a realistic subset; the
    /// reader ignores the rest) and its layer store's `mount-id`.
    fn docker_fixture(root: &Path) {
        let config = format!(
            r#"{{"StreamConfig":{{}},"State":{{"Running":true,"Paused":false,"Restarting":false,
"OOMKilled":false,"RemovalInProgress":false,"Dead":false,"Pid":48211,"ExitCode":0,"Error":"",
"StartedAt":"2026-11-30T09:12:44.10394Z","FinishedAt":"0001-01-01T00:00:00Z","Health":null}},
"ID":"{DOCKER_ID}","Created":"2026-11-30T09:12:43.88Z","Managed":false,
"Path":"/usr/local/bin/api","Args":["--listen",":8080"],
"Config":{{"Hostname":"3f9a8c2d1e4b","Domainname":"","User":"app","AttachStdin":false,
"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
"Cmd":["--listen",":8080"],"Image":"shop/api:1.4","Volumes":null,"WorkingDir":"/srv",
"Entrypoint":["/usr/local/bin/api"],"OnBuild":null,
"Labels":{{"com.docker.compose.project":"shop","team":"payments"}}}},
"Image":"sha256:5e4a7c9b1d3f2e8a6c0b4d2f1e3a5c7b9d0f2e4a6c8b1d3f5e7a9c0b2d4f6e8a",
"ImageManifest":null,"NetworkSettings":{{"Bridge":"","SandboxID":"","Networks":{{}}}},
"LogPath":"/var/lib/docker/containers/{DOCKER_ID}/{DOCKER_ID}-json.log",
"Name":"/shop-api-1","Driver":"overlay2","OS":"linux","RestartCount":0,
"HasBeenStartedBefore":true,"HasBeenManuallyStopped":false,
"MountPoints":{{"/srv/uploads":{{"Source":"/var/lib/docker/volumes/uploads/_data",
"Destination":"/srv/uploads","RW":true,"Name":"uploads","Driver":"local","Type":"volume"}}}},
"SecretReferences":null,"ConfigReferences":null,"MountLabel":"","ProcessLabel":"",
"AppArmorProfile":"docker-default","SeccompProfile":"","NoNewPrivileges":false,
"HostnamePath":"/var/lib/docker/containers/{DOCKER_ID}/hostname",
"HostsPath":"/var/lib/docker/containers/{DOCKER_ID}/hosts",
"ResolvConfPath":"/var/lib/docker/containers/{DOCKER_ID}/resolv.conf"}}"#
        );
        fixture(
            root,
            &format!("var/lib/docker/containers/{DOCKER_ID}/config.v2.json"),
            &config,
        );
        fixture(
            root,
            &format!("var/lib/docker/image/overlay2/layerdb/mounts/{DOCKER_ID}/mount-id"),
            MOUNT_ID,
        );
    }

    /// A containerd (CRI) task bundle's `config.json` as the kubelet's containerd 1.7
    /// writes it for a pod's container (trimmed).
    fn cri_fixture(root: &Path) {
        let spec = r#"{"ociVersion":"1.1.0","process":{"user":{"uid":65532,"gid":65532},
"args":["/checkout"],"env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"],
"cwd":"/","capabilities":{"bounding":["CAP_CHOWN"]},"noNewPrivileges":false},
"root":{"path":"rootfs"},
"mounts":[{"destination":"/proc","type":"proc","source":"proc","options":["nosuid","noexec","nodev"]},
{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
{"destination":"/etc/hosts","type":"bind","source":"/var/lib/kubelet/pods/0b7f/etc-hosts","options":["rbind","rprivate","rw"]},
{"destination":"/var/run/secrets/kubernetes.io/serviceaccount","type":"bind","source":"/var/lib/kubelet/pods/0b7f/volumes/kubernetes.io~projected/kube-api-access-x","options":["rbind","rprivate","ro"]},
{"destination":"/cache/","type":"bind","source":"/var/lib/kubelet/pods/0b7f/volumes/kubernetes.io~empty-dir/cache","options":["rbind","rprivate","rw"]}],
"annotations":{"io.kubernetes.cri.container-name":"checkout",
"io.kubernetes.cri.container-type":"container",
"io.kubernetes.cri.image-name":"registry.example/shop/checkout:2.7.1",
"io.kubernetes.cri.sandbox-id":"a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90",
"io.kubernetes.cri.sandbox-name":"checkout-7d9f8b6c5-x2x9q",
"io.kubernetes.cri.sandbox-namespace":"shop",
"io.kubernetes.cri.sandbox-uid":"0b7f3c1e-2d4a-4b6c-8e0f-1a3c5e7b9d2f",
"driftwatch.io/ignore-paths":"/app/cache"},
"linux":{"namespaces":[{"type":"pid"},{"type":"ipc","path":"/proc/48001/ns/ipc"},{"type":"mount"}]}}"#;
        fixture(
            root,
            &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{CRI_ID}/config.json"),
            spec,
        );
    }

    #[test]
    fn docker_and_containerd_fixtures_give_the_right_names() {
        let dir = tempfile::tempdir().unwrap();
        docker_fixture(dir.path());
        cri_fixture(dir.path());
        let state = read(&StateDirs::under(dir.path()));
        assert!(state.errors.is_empty(), "{:?}", state.errors);

        let docker_root = dir
            .path()
            .join(format!("var/lib/docker/overlay2/{MOUNT_ID}/merged"));
        let docker = &state.by_root[&docker_root];
        assert_eq!(
            docker.reference,
            ContainerRef {
                id: DOCKER_ID.into(),
                name: Some("shop-api-1".into()),
                runtime: "docker".into(),
                image: Some("shop/api:1.4".into()),
                image_digest: Some(
                    "sha256:5e4a7c9b1d3f2e8a6c0b4d2f1e3a5c7b9d0f2e4a6c8b1d3f5e7a9c0b2d4f6e8a"
                        .into()
                ),
                pod: None,
                namespace: None,
            }
        );
        assert_eq!(docker.labels["team"], "payments");
        assert!(docker.mounts.contains(&b"/srv/uploads".to_vec()));

        let cri_root = dir.path().join(format!(
            "run/containerd/io.containerd.runtime.v2.task/k8s.io/{CRI_ID}/rootfs"
        ));
        let cri = &state.by_root[&cri_root];
        assert_eq!(cri.reference.name.as_deref(), Some("checkout"));
        assert_eq!(cri.reference.runtime, "containerd");
        assert_eq!(
            cri.reference.pod.as_deref(),
            Some("checkout-7d9f8b6c5-x2x9q")
        );
        assert_eq!(cri.reference.namespace.as_deref(), Some("shop"));
        assert_eq!(
            cri.reference.image.as_deref(),
            Some("registry.example/shop/checkout:2.7.1")
        );
        assert_eq!(cri.labels["driftwatch.io/ignore-paths"], "/app/cache");
        assert!(cri.mounts.contains(&b"/cache".to_vec()));
        assert!(cri
            .mounts
            .contains(&b"/var/run/secrets/kubernetes.io/serviceaccount".to_vec()));
    }

    #[test]
    fn hostile_metadata_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        fixture(
            dir.path(),
            "var/lib/containers/storage/overlay-containers/containers.json",
            "[{\"id\": 5}",
        );
        fixture(
            dir.path(),
            "var/lib/docker/containers/x/config.v2.json",
            r#"{"ID":"../../etc","Driver":"overlay2"}"#,
        );
        fixture(
            dir.path(),
            "run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/config.json",
            "\u{0}\u{1}",
        );
        let state = read(&StateDirs::under(dir.path()));
        assert!(state.by_root.is_empty());
        assert_eq!(state.errors.len(), 2, "{:?}", state.errors);
    }
}
