//! The Kubernetes DaemonSet (`packaging/kubernetes/daemonset.yaml`) grants the agent
//! what it needs to see the node's containers and nothing more, and its configuration
//! loads with the agent's own loaders:
//!
//! - the host PID namespace (the containers' processes, their mount tables and
//!   executables), but not the host's network or IPC namespaces, no privileged mode,
//!   no service account token;
//! - every capability dropped but `DAC_READ_SEARCH` and `SYS_PTRACE`, no privilege
//!   escalation, a read-only root file system, not run as anything but root (reading
//!   other users' layers needs it);
//! - host paths: each runtime's state directory, mounted read-only at its own path
//!   (layer paths in the host's mount table must resolve in the pod) with host-to-pod
//!   propagation (containers started later appear), never the host's root; the only
//!   writable host path is the agent's own state directory;
//! - `agent.toml` and `policy.toml` of the ConfigMap load, the policy checks
//!   containers, and every file the agent writes lies on a writable volume.
//!
//! Parsed with a YAML parser, not grepped: a key moved to the wrong level fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_agent::config::AgentConfig;
use driftwatch_agent::policy::Policy;
use std::collections::BTreeSet;
use std::path::Path;
use yaml_rust2::{Yaml, YamlLoader};

/// The runtimes' state the agent reads (metadata and overlay layers).
const RUNTIME_DIRS: [&str; 4] = [
    "/var/lib/containerd",
    "/run/containerd",
    "/var/lib/docker",
    "/var/lib/containers",
];
/// The capabilities it holds: read every layer, read other processes' `/proc` entries.
const CAPABILITIES: [&str; 2] = ["DAC_READ_SEARCH", "SYS_PTRACE"];

fn manifest() -> Vec<Yaml> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/kubernetes/daemonset.yaml");
    YamlLoader::load_from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn of_kind<'a>(documents: &'a [Yaml], kind: &str) -> &'a Yaml {
    documents
        .iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in the manifest"))
}

fn strings(list: &Yaml) -> BTreeSet<String> {
    list.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn is_true(value: &Yaml) -> bool {
    value.as_bool() == Some(true)
}

/// One volume mount of the agent's container with the volume it mounts.
struct Mount<'a> {
    path: &'a str,
    read_only: bool,
    propagation: Option<&'a str>,
    volume: &'a Yaml,
}

fn mounts<'a>(pod: &'a Yaml, container: &'a Yaml) -> Vec<Mount<'a>> {
    let volumes = pod["volumes"].as_vec().expect("volumes");
    container["volumeMounts"]
        .as_vec()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            Mount {
                path: m["mountPath"].as_str().unwrap(),
                read_only: is_true(&m["readOnly"]),
                propagation: m["mountPropagation"].as_str(),
                volume: volumes
                    .iter()
                    .find(|v| v["name"].as_str() == Some(name))
                    .unwrap_or_else(|| panic!("volume {name} is mounted but not declared")),
            }
        })
        .collect()
}

fn host_path(volume: &Yaml) -> Option<&str> {
    volume["hostPath"]["path"].as_str()
}

/// The mount holding `file` in the pod, if any (the longest mount path above it).
fn mount_of<'a, 'b>(mounts: &'b [Mount<'a>], file: &Path) -> Option<&'b Mount<'a>> {
    mounts
        .iter()
        .filter(|m| file.starts_with(m.path))
        .max_by_key(|m| m.path.len())
}

#[test]
fn the_daemonset_sees_the_hosts_containers_with_the_least_it_needs() {
    let documents = manifest();
    let pod = &of_kind(&documents, "DaemonSet")["spec"]["template"]["spec"];
    assert!(
        is_true(&pod["hostPID"]),
        "hostPID: the containers' processes"
    );
    for key in ["hostNetwork", "hostIPC"] {
        assert!(!is_true(&pod[key]), "{key} is not needed");
    }
    assert_eq!(
        pod["automountServiceAccountToken"].as_bool(),
        Some(false),
        "the agent talks to no API server"
    );
    let containers = pod["containers"].as_vec().unwrap();
    assert_eq!(containers.len(), 1);
    let agent = &containers[0];
    let security = &agent["securityContext"];
    assert!(!is_true(&security["privileged"]), "never privileged");
    assert!(is_true(&security["readOnlyRootFilesystem"]));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(security["runAsUser"].as_i64(), Some(0));
    assert_eq!(
        strings(&security["capabilities"]["drop"]),
        BTreeSet::from(["ALL".to_string()])
    );
    assert_eq!(
        strings(&security["capabilities"]["add"]),
        CAPABILITIES.iter().map(|c| c.to_string()).collect()
    );
    assert!(
        agent["resources"]["limits"]["memory"].as_str().is_some(),
        "a memory limit"
    );

    let mounts = mounts(pod, agent);
    let host_mounts: Vec<&Mount> = mounts
        .iter()
        .filter(|m| host_path(m.volume).is_some())
        .collect();
    for dir in RUNTIME_DIRS {
        let mount = host_mounts
            .iter()
            .find(|m| host_path(m.volume) == Some(dir))
            .unwrap_or_else(|| panic!("{dir} of the host is not mounted"));
        assert_eq!(
            mount.path, dir,
            "{dir}: layer paths must resolve in the pod"
        );
        assert!(mount.read_only, "{dir} must be read-only");
        assert_eq!(
            mount.propagation,
            Some("HostToContainer"),
            "{dir}: containers started later must appear"
        );
    }
    let writable: Vec<&str> = host_mounts
        .iter()
        .filter(|m| !m.read_only)
        .map(|m| m.path)
        .collect();
    for m in &host_mounts {
        let on_host = host_path(m.volume).unwrap();
        assert_ne!(on_host, "/", "never the host's root");
        assert!(!on_host.ends_with(".sock"), "no runtime socket: {on_host}");
    }

    let config_map = &of_kind(&documents, "ConfigMap")["data"];
    let agent_toml = config_map["agent.toml"].as_str().expect("agent.toml");
    let config = AgentConfig::parse(agent_toml, Path::new("agent.toml")).unwrap();
    assert_eq!(
        writable,
        [config.state_dir.to_str().unwrap()],
        "the agent's state directory is the only writable host path"
    );
    for (what, dir) in [
        ("state_dir", &config.state_dir),
        ("run_dir", &config.run_dir),
    ] {
        let mount = mount_of(&mounts, dir).unwrap_or_else(|| {
            panic!(
                "{what} {} is on the read-only root file system",
                dir.display()
            )
        });
        assert!(!mount.read_only, "{what} must be writable");
    }
    let policy_path = config.policy.as_deref().expect("a policy file");
    let config_mount = mount_of(&mounts, policy_path).expect("the policy is mounted");
    assert_eq!(
        config_mount.volume["configMap"]["name"].as_str(),
        Some("driftwatch")
    );
    let policy_name = policy_path.strip_prefix(config_mount.path).unwrap();
    let policy_text = config_map[policy_name.to_str().unwrap()]
        .as_str()
        .expect("the policy agent.toml names is in the ConfigMap");
    let policy = Policy::parse(policy_text).unwrap();
    assert!(
        policy.config().containers.enabled,
        "the policy checks containers"
    );
    assert!(
        mount_of(&mounts, &config.baseline).is_some()
            || config.baseline.starts_with("/usr/lib/driftwatch"),
        "the baseline {} is neither mounted nor in the image",
        config.baseline.display()
    );
}
