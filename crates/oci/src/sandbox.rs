//! A Kubernetes pod's sandbox container: handed to runc.
//!
//! Under the CRI, a RuntimeClass's handler runs every container of the
//! pod, the sandbox ("pause") container too, which holds the pod's
//! namespaces and is an ordinary Linux program, never a Skiff image. A
//! container whose annotations mark it as the sandbox is therefore run by
//! runc, with the same command and flags and a state root of its own under
//! skiff-oci's (`ROOT/.runc`), and every later command naming it goes to
//! runc as well. The Skiff containers of the pod join its network
//! namespace, where they find the `eth0` the CNI plugin made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The annotations by which the CRI implementations mark a sandbox
/// container: containerd's and CRI-O's.
pub const SANDBOX_ANNOTATIONS: [(&str, &str); 2] =
    [("io.kubernetes.cri.container-type", "sandbox"), ("io.kubernetes.cri-o.ContainerType", "sandbox")];

/// The program run for sandboxes (found on `PATH`).
pub const RUNC: &str = "runc";

/// Whether `annotations` mark a pod's sandbox container.
pub fn is_sandbox(annotations: &BTreeMap<String, String>) -> bool {
    SANDBOX_ANNOTATIONS.iter().any(|(k, v)| annotations.get(*k).is_some_and(|a| a == v))
}

/// runc's state root under skiff-oci's `root`.
pub fn runc_root(root: &Path) -> PathBuf {
    root.join(".runc")
}

/// Whether runc holds the container `id` (a sandbox skiff-oci handed on).
pub fn is_runcs(root: &Path, id: &str) -> bool {
    !id.is_empty() && !id.contains('/') && id != "." && id != ".." && runc_root(root).join(id).is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_and_cri_o_sandboxes_are_recognised() {
        let ann = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(is_sandbox(&ann("io.kubernetes.cri.container-type", "sandbox")));
        assert!(is_sandbox(&ann("io.kubernetes.cri-o.ContainerType", "sandbox")));
        assert!(!is_sandbox(&ann("io.kubernetes.cri.container-type", "container")));
        assert!(!is_sandbox(&BTreeMap::new()));
    }

    #[test]
    fn only_a_container_in_runcs_root_is_runcs() {
        let root = std::env::temp_dir().join(format!("skiff-oci-sandbox-{}", std::process::id()));
        std::fs::create_dir_all(runc_root(&root).join("pod1")).unwrap();
        assert!(is_runcs(&root, "pod1"));
        assert!(!is_runcs(&root, "web"));
        assert!(!is_runcs(&root, ".."));
        assert!(!is_runcs(&root, ""));
        let _ = std::fs::remove_dir_all(root);
    }
}
