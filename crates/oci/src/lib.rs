//! Skiff images as OCI containers.
//!
//! - [`package`]: the OCI image `skiff package` writes (one layer with the
//!   ELF, the manifest's facts as `org.skiff.*` labels and annotations).
//! - The `skiff-oci` binary, an OCI runtime for podman, containerd and
//!   Kubernetes, on the modules here: [`spec`] reads the bundle's
//!   `config.json` into a [`spec::Plan`], [`state`] keeps containers'
//!   state as runc does, [`cgroup`] makes and joins the cgroup,
//!   [`network`] connects the image's NIC, [`log`] writes the runtime's
//!   log for the engines, [`sandbox`] hands a pod's sandbox container to
//!   runc.
//!
//! docs/containers.md describes the whole.

#![forbid(unsafe_code)]

pub mod cgroup;
pub mod log;
pub mod network;
pub mod package;
pub mod sandbox;
pub mod spec;
pub mod state;
