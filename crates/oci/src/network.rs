//! The container's network: what the image's NICs are connected to.
//!
//! [`nics`] is the one entry point: from the NICs the image declares and
//! the container's network namespace (already entered when it runs), it
//! returns the tender's `--net` NICs. An image without a NIC needs
//! nothing. Connecting a declared NIC to the container's `eth0` (a TAP
//! device in the namespace joined to it) is not done yet, so such an image
//! is refused with a clear message rather than started without its
//! network.

use skiff_tender::elf::DeclaredDevice;
use skiff_tender::net::NicSpec;

/// The image's NICs cannot be connected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// Container networking is not there yet.
    #[error(
        "this image declares the NIC {0:?}: container networking is not yet supported by skiff-oci \
         (images without a NIC run; run this one with `skiff run --net {0}=user --publish ...` meanwhile)"
    )]
    NotYet(String),
}

/// The tender's NICs for an image declaring `declared`, in the network
/// namespace the calling process is in.
pub fn nics(declared: &[DeclaredDevice]) -> Result<Vec<NicSpec>, NetworkError> {
    match declared.iter().find(|d| d.kind == skiff_abi::DeviceKind::Net) {
        Some(nic) => Err(NetworkError::NotYet(nic.name.clone())),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_without_nics_needs_none_and_one_with_a_nic_is_refused_clearly() {
        assert_eq!(nics(&[]), Ok(vec![]));
        let nic = DeclaredDevice { kind: skiff_abi::DeviceKind::Net, name: "service".into(), outbound: false };
        let err = nics(&[nic]).unwrap_err().to_string();
        assert!(err.contains("container networking is not yet supported"), "{err}");
        assert!(err.contains("\"service\""), "{err}");
    }
}
