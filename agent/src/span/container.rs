//! Container and pod identity from a process's cgroup (`/proc/PID/cgroup`): the
//! container id (`container.id`) and the Kubernetes pod uid (`k8s.pod.uid`), from the
//! names the container runtimes and the kubelet give cgroups.
//!
//! Pure: text in, identity out; no file is read here (`resource` reads the file once per
//! process). Any input is accepted; what is not recognised is simply not an identity.
//!
//! The names understood, innermost first (a process in nested containers, such as a
//! pod in a kind node, is described by the innermost container and pod):
//! - cgroup v2 with the kubelet's systemd driver:
//!   `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`
//!   (the uid's dashes written as underscores; `kubepods-pod<uid>.slice` for guaranteed
//!   QoS), with `crio-<id>.scope` (CRI-O; `crio-conmon-<id>.scope` is CRI-O's monitor,
//!   not the container), `docker-<id>.scope` (cri-dockerd) or `cri-containerd-`;
//! - the cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>`, `/kubepods/pod<uid>/<id>`
//!   (guaranteed), `/kubepods/besteffort/pod<uid>/crio-<id>`;
//! - Docker and Podman outside Kubernetes: `/docker/<id>`, `system.slice/docker-<id>.scope`,
//!   `machine.slice/libpod-<id>.scope` (and its `container` subgroup);
//! - cgroup v1: one line per hierarchy (`4:memory:/kubepods/...`); the line that names a
//!   container (and a pod) is the one used, the unified `0::` line first among equals;
//! - paths seen from another cgroup namespace (`/../../kubepods-besteffort-pod<uid>.slice/...`,
//!   what an agent in a pod of its own reads): the names are matched wherever they are.
//!
//! A container id is 64 lower-case hex digits. A pod uid is a UUID (the API server's) or
//! 32 hex digits (the kubelet's hash for a static pod); it is given with dashes.

/// What a process's cgroup says about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// 64 hex digits: the innermost container the process runs in.
    pub container_id: Option<String>,
    /// The pod's uid (with dashes), when the cgroup is a kubelet's pod cgroup.
    pub pod_uid: Option<String>,
}

impl CgroupIdentity {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none()
    }
}

/// The identity in the text of a `/proc/PID/cgroup` file.
#[must_use]
pub fn parse(text: &str) -> CgroupIdentity {
    let mut best = CgroupIdentity::default();
    let mut best_score = 0u8;
    for line in text.lines() {
        // `hierarchy-ID:controller-list:cgroup-path`; the path may itself hold colons.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let found = parse_path(path);
        // A container with its pod beats a container, which beats a pod alone; among
        // equals the unified hierarchy (`0::`), then the first line.
        let score = u8::from(found.container_id.is_some()) * 4
            + u8::from(found.pod_uid.is_some()) * 2
            + u8::from(id == "0" && !found.is_empty());
        if score > best_score {
            best = found;
            best_score = score;
        }
    }
    best
}

/// The identity in one cgroup path (`/kubepods/burstable/pod<uid>/<id>`).
#[must_use]
pub fn parse_path(path: &str) -> CgroupIdentity {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let pod = parts.iter().enumerate().rev().find_map(|(i, p)| pod_uid(p).map(|uid| (i, uid)));
    // The container must be inside the pod: a process in a pod's own cgroup (no
    // container) of a kind node is not in the node's container as far as the pod goes.
    let inside = pod.as_ref().map_or(0, |(i, _)| i + 1);
    let container_id = parts.get(inside..).unwrap_or_default().iter().rev().find_map(|p| container_id(p));
    CgroupIdentity { container_id, pod_uid: pod.map(|(_, uid)| uid) }
}

/// Runtimes' prefixes before the id in a cgroup name (`cri-containerd-<id>.scope`).
const RUNTIME_PREFIXES: &[&str] = &["cri-containerd-", "containerd-", "crio-", "docker-", "libpod-"];

/// Runtime helper processes whose cgroup is named after the container they watch but
/// which are not it.
const HELPER_PREFIXES: &[&str] = &["crio-conmon-", "libpod-conmon-"];

/// The container id named by one path component, if any.
fn container_id(part: &str) -> Option<String> {
    if HELPER_PREFIXES.iter().any(|h| part.starts_with(h)) {
        return None;
    }
    let name = part.strip_suffix(".scope").unwrap_or(part);
    let id = RUNTIME_PREFIXES.iter().find_map(|p| name.strip_prefix(p)).unwrap_or(name);
    is_hex(id, 64).then(|| id.to_owned())
}

/// The pod uid named by one path component: `pod<uid>` (cgroupfs driver) or
/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd driver).
fn pod_uid(part: &str) -> Option<String> {
    let raw = if let Some(slice) = part.strip_suffix(".slice") {
        if !slice.starts_with("kubepods") {
            return None;
        }
        slice.rsplit_once("-pod")?.1
    } else {
        part.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    (is_uuid(&uid) || is_hex(&uid, 32)).then_some(uid)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `8-4-4-4-12` hex digits, lower case.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5 && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| is_hex(g, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "3f1a5ad9c2b84e0f7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170a";
    const CID2: &str = "9c0e2a1b3d4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";
    const UID: &str = "8d6c1f2e-4b3a-4c5d-9e8f-7a6b5c4d3e2f";

    fn id(container: Option<&str>, pod: Option<&str>) -> CgroupIdentity {
        CgroupIdentity { container_id: container.map(str::to_owned), pod_uid: pod.map(str::to_owned) }
    }

    #[test]
    fn cgroup_v2_systemd_driver_containerd_crio_docker() {
        let uid_ = UID.replace('-', "_");
        for (qos, runtime) in [
            ("burstable", "cri-containerd-"),
            ("besteffort", "crio-"),
            ("burstable", "docker-"),
            ("besteffort", "cri-containerd-"),
        ] {
            let text = format!(
                "0::/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid_}.slice/{runtime}{CID}.scope\n"
            );
            assert_eq!(parse(&text), id(Some(CID), Some(UID)), "{text}");
        }
        // Guaranteed QoS: no QoS slice.
        let text = format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{CID}.scope\n");
        assert_eq!(parse(&text), id(Some(CID), Some(UID)));
    }

    #[test]
    fn cgroupfs_driver_all_qos_classes() {
        for path in [
            format!("/kubepods/burstable/pod{UID}/{CID}"),
            format!("/kubepods/besteffort/pod{UID}/{CID}"),
            format!("/kubepods/pod{UID}/{CID}"),
            format!("/kubepods/besteffort/pod{UID}/crio-{CID}"),
        ] {
            assert_eq!(parse(&format!("0::{path}\n")), id(Some(CID), Some(UID)), "{path}");
        }
    }

    #[test]
    fn crio_conmon_is_the_pod_but_not_the_container() {
        let uid_ = UID.replace('-', "_");
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-conmon-{CID}.scope\n"
        );
        assert_eq!(parse(&text), id(None, Some(UID)));
        assert_eq!(parse(&format!("0::/machine.slice/libpod-conmon-{CID}.scope\n")), id(None, None));
    }

    #[test]
    fn docker_and_podman_outside_kubernetes() {
        assert_eq!(parse(&format!("0::/system.slice/docker-{CID}.scope\n")), id(Some(CID), None));
        assert_eq!(parse(&format!("0::/docker/{CID}\n")), id(Some(CID), None));
        assert_eq!(parse(&format!("0::/machine.slice/libpod-{CID}.scope\n")), id(Some(CID), None));
        // Podman's split cgroups: the container's processes in a `container` subgroup.
        assert_eq!(parse(&format!("0::/machine.slice/libpod-{CID}.scope/container\n")), id(Some(CID), None));
        // A rootless podman container under a user's systemd.
        let text =
            format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container\n");
        assert_eq!(parse(&text), id(Some(CID), None));
    }

    #[test]
    fn cgroup_v1_picks_the_line_with_the_container() {
        // Docker on cgroup v1 (every controller names the container), and a hybrid host
        // whose unified hierarchy is empty.
        let text = format!(
            "12:pids:/docker/{CID}\n11:hugetlb:/docker/{CID}\n10:net_cls,net_prio:/docker/{CID}\n\
             9:cpu,cpuacct:/docker/{CID}\n4:memory:/docker/{CID}\n1:name=systemd:/docker/{CID}\n0::/\n"
        );
        assert_eq!(parse(&text), id(Some(CID), None));
        // Kubernetes on cgroup v1 with the systemd driver; some controllers at the root.
        let uid_ = UID.replace('-', "_");
        let pod = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice");
        let text = format!(
            "12:cpuset:/\n11:memory:{pod}/cri-containerd-{CID}.scope\n10:devices:{pod}/cri-containerd-{CID}.scope\n\
             3:cpu,cpuacct:{pod}/cri-containerd-{CID}.scope\n1:name=systemd:{pod}/cri-containerd-{CID}.scope\n"
        );
        assert_eq!(parse(&text), id(Some(CID), Some(UID)));
        // Only one hierarchy has it (this machine: memory in a v1 sandbox, v2 elsewhere):
        // a 32-digit name is not a container.
        let text = format!(
            "9:name=systemd:/\n4:memory:/process_api/55768e09754a676e5f94d265c252fe76\n1:cpu:/\n\
             0::/kubepods/besteffort/pod{UID}/{CID}\n"
        );
        assert_eq!(parse(&text), id(Some(CID), Some(UID)));
    }

    #[test]
    fn nested_the_innermost_pod_and_container() {
        // A pod in a kind node (the node is a Docker container).
        let text = format!("0::/docker/{CID2}/kubepods/besteffort/pod{UID}/{CID}\n");
        assert_eq!(parse(&text), id(Some(CID), Some(UID)));
        let uid_ = UID.replace('-', "_");
        let text = format!(
            "0::/system.slice/docker-{CID2}.scope/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{CID}.scope\n"
        );
        assert_eq!(parse(&text), id(Some(CID), Some(UID)));
        // A process in the pod's own cgroup: the pod, not the kind node's container.
        assert_eq!(parse(&format!("0::/docker/{CID2}/kubepods/besteffort/pod{UID}\n")), id(None, Some(UID)));
        // The kind node's own processes (its kubelet).
        assert_eq!(parse(&format!("0::/docker/{CID2}/kubelet.slice\n")), id(Some(CID2), None));
    }

    #[test]
    fn paths_seen_from_another_cgroup_namespace() {
        let uid_ = UID.replace('-', "_");
        let text = format!(
            "0::/../../kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{CID}.scope\n"
        );
        assert_eq!(parse(&text), id(Some(CID), Some(UID)));
        assert_eq!(parse(&format!("0::/../../pod{UID}/{CID}\n")), id(Some(CID), Some(UID)));
        // The agent's own container, from inside its namespace.
        assert_eq!(parse("0::/\n"), id(None, None));
    }

    #[test]
    fn static_pods_have_hash_uids() {
        let hash = "6a6e1b3d1c3a5e7a8b2c9d0e1f2a3b4c";
        let text = format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/cri-containerd-{CID}.scope\n");
        assert_eq!(parse(&text), id(Some(CID), Some(hash)));
    }

    #[test]
    fn not_containers() {
        for text in [
            "",
            "0::/\n",
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/system.slice/nginx.service\n",
            "0::/init.scope\n",
            // Too short, upper case, not hex.
            "0::/docker/3f1a5ad9c2b8\n",
            &format!("0::/docker/{}\n", CID.to_uppercase()),
            &format!("0::/docker/{}\n", CID.replace('a', "g")),
            // A pod uid that is not one; a slice that is not the kubelet's.
            "0::/kubepods/besteffort/podnotauid/x\n",
            &format!("0::/system.slice/foo-pod{}.slice\n", UID.replace('-', "_")),
            "no colons at all",
            "0:",
        ] {
            assert_eq!(parse(text), id(None, None), "{text:?}");
        }
    }

    /// Random bytes and mangled real lines: never a panic, and anything found is well
    /// formed.
    #[test]
    fn junk_never_panics() {
        let uid_ = UID.replace('-', "_");
        let real = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{CID}.scope\n4:memory:/kubepods/pod{UID}/{CID}\n"
        );
        let alphabet: &[u8] = b"0123456789abcdef-_:/.\npodkubescriocontainerd\xff\xfe\x00 ";
        for round in 0..20_000u32 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                (0..rand::random_range(0..300)).map(|_| alphabet[rand::random_range(0..alphabet.len())]).collect()
            } else {
                // A real file with a few bytes changed, cut or duplicated.
                let mut b = real.as_bytes().to_vec();
                for _ in 0..rand::random_range(1..6) {
                    let i = rand::random_range(0..b.len());
                    match rand::random_range(0..3) {
                        0 => b[i] = rand::random(),
                        1 => b.truncate(i),
                        _ => b.insert(i, alphabet[rand::random_range(0..alphabet.len())]),
                    }
                    if b.is_empty() {
                        break;
                    }
                }
                b
            };
            let found = parse(&String::from_utf8_lossy(&bytes));
            if let Some(c) = &found.container_id {
                assert!(is_hex(c, 64), "{c}");
            }
            if let Some(u) = &found.pod_uid {
                assert!(is_uuid(u) || is_hex(u, 32), "{u}");
            }
        }
    }
}
