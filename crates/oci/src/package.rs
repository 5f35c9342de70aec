//! The OCI image of a Skiff image: what `skiff package` writes.
//!
//! One tar file that is at the same time an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/...`) and a docker archive (`manifest.json`
//! naming the same blobs), so `podman load`, `skopeo copy
//! oci-archive:...`/`docker-archive:...` and `ctr image import` all take
//! it, each with the image's name.
//!
//! The image has one uncompressed layer holding the ELF at [`IMAGE_PATH`]
//! (nothing else: the runtime needs no other file), the entrypoint
//! `[IMAGE_PATH]`, and the image's manifest facts as labels on the image
//! configuration and annotations on the manifest, under [`PREFIX`].
//! Every timestamp is the epoch and every owner root, so the same ELF and
//! name always give the same bytes and digests.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use skiff_tender::elf::Image;
use std::collections::BTreeMap;
use std::io::Write;

/// The prefix of every label and annotation Skiff writes.
pub const PREFIX: &str = "org.skiff.";
/// Where the ELF sits in the container's root file system.
pub const IMAGE_PATH: &str = "/skiff/image";
/// The label with the ABI version the image was built for.
pub const LABEL_ABI: &str = "org.skiff.abi-version";
/// The label with the image's declared NICs, comma-separated (empty for none).
pub const LABEL_NICS: &str = "org.skiff.nics";
/// The label with the image's declared disks, comma-separated (empty for none).
pub const LABEL_DISKS: &str = "org.skiff.disks";
/// The label with the guest memory the image boots with by default.
pub const LABEL_MEMORY: &str = "org.skiff.memory";
/// The label with [`IMAGE_PATH`].
pub const LABEL_IMAGE: &str = "org.skiff.image";
/// Every timestamp in the image: the epoch, for reproducible digests.
const CREATED: &str = "1970-01-01T00:00:00Z";

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// `skiff package` could not write the image.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The name is not a valid image reference.
    #[error(
        "{0:?} is not a valid image name: use lower-case letters, digits and . _ - / with an optional :TAG \
         (e.g. hello or registry.example/team/hello:1.0)"
    )]
    BadName(String),
    /// Writing the tar failed.
    #[error("cannot write the image archive: {0}")]
    Write(#[from] std::io::Error),
}

/// What the image's manifest note says, as the labels carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The ABI version the image was built for.
    pub abi_version: u32,
    /// The declared NICs, in manifest order.
    pub nics: Vec<String>,
    /// The declared block devices, in manifest order.
    pub disks: Vec<String>,
    /// Guest memory by default, in bytes (the tender's `--mem` default).
    pub memory: u64,
}

impl Facts {
    /// The facts of a parsed image.
    pub fn of(image: &Image) -> Facts {
        let named = |kind| image.devices.iter().filter(|d| d.kind == kind).map(|d| d.name.clone()).collect();
        Facts {
            abi_version: image.abi_version,
            nics: named(skiff_abi::DeviceKind::Net),
            disks: named(skiff_abi::DeviceKind::Block),
            memory: skiff_tender::DEFAULT_MEM,
        }
    }

    /// The labels (and annotations) that carry these facts.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_ABI.to_string(), self.abi_version.to_string()),
            (LABEL_NICS.to_string(), self.nics.join(",")),
            (LABEL_DISKS.to_string(), self.disks.join(",")),
            (LABEL_MEMORY.to_string(), format!("{}M", self.memory >> 20)),
            (LABEL_IMAGE.to_string(), IMAGE_PATH.to_string()),
        ])
    }
}

/// A full image reference: `localhost/hello:latest` for `hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Repository with its domain, e.g. `localhost/hello`.
    pub repository: String,
    /// The tag, e.g. `latest`.
    pub tag: String,
}

impl Reference {
    /// Parses a name: no domain means `localhost/` (a local image, never
    /// one of a public registry's), no tag means `:latest`.
    pub fn parse(name: &str) -> Result<Reference, PackageError> {
        let bad = || PackageError::BadName(name.to_string());
        let (repo, tag) = match name.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (name, "latest"),
        };
        // The first of several components is a domain, which may have a port.
        let several = repo.contains('/');
        let repo_ok = !repo.is_empty()
            && repo.split('/').enumerate().all(|(i, c)| {
                let extra: &[u8] = if i == 0 && several { b"._-:" } else { b"._-" };
                !c.is_empty()
                    && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
                    && c.as_bytes()[0].is_ascii_alphanumeric()
            });
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && tag.as_bytes()[0] != b'.'
            && tag.as_bytes()[0] != b'-';
        if !repo_ok || !tag_ok {
            return Err(bad());
        }
        // As docker's references: a first component is a domain when it
        // has a dot or a port or is localhost; without one, the image is
        // local.
        let first = repo.split('/').next().unwrap_or_default();
        let has_domain = several && (first.contains(['.', ':']) || first == "localhost");
        let repository = if has_domain { repo.to_string() } else { format!("localhost/{repo}") };
        Ok(Reference { repository, tag: tag.to_string() })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

/// A content-addressed blob.
struct Blob {
    bytes: Vec<u8>,
    hex: String,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        let hex = hex(&Sha256::digest(&bytes));
        Blob { bytes, hex }
    }

    fn digest(&self) -> String {
        format!("sha256:{}", self.hex)
    }

    fn path(&self) -> String {
        format!("blobs/sha256/{}", self.hex)
    }

    fn descriptor(&self, media_type: &str) -> Value {
        json!({ "mediaType": media_type, "digest": self.digest(), "size": self.bytes.len() })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn header(path: &str, size: usize, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).expect("a short relative path");
    h.set_size(size as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(kind);
    h.set_cksum();
    h
}

/// The layer: `skiff/` and the ELF at `skiff/image`.
fn layer(elf: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let dir = IMAGE_PATH.trim_start_matches('/').rsplit_once('/').map_or("", |(d, _)| d);
    b.append(&header(&format!("{dir}/"), 0, 0o755, tar::EntryType::Directory), std::io::empty())?;
    b.append(&header(IMAGE_PATH.trim_start_matches('/'), elf.len(), 0o755, tar::EntryType::Regular), elf)?;
    b.into_inner()
}

/// What [`write`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The manifest's digest (`sha256:...`).
    pub manifest_digest: String,
    /// The configuration's digest: the image ID podman shows.
    pub config_digest: String,
    /// The image's full name.
    pub reference: Reference,
}

/// Writes the OCI image of the ELF `elf` (with `facts`) named `reference`
/// as a tar archive to `out`.
pub fn write(elf: &[u8], facts: &Facts, reference: &Reference, out: impl Write) -> Result<Written, PackageError> {
    let layer = Blob::new(layer(elf)?);
    let labels = facts.labels();
    let config = json!({
        "created": CREATED,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [IMAGE_PATH],
            "WorkingDir": "/",
            "StopSignal": "SIGTERM",
            "Labels": labels,
        },
        "rootfs": { "type": "layers", "diff_ids": [layer.digest()] },
        "history": [{ "created": CREATED, "created_by": "skiff package" }],
    });
    let config = Blob::new(serde_json::to_vec(&config).expect("JSON values serialise"));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config.descriptor(MEDIA_CONFIG),
        "layers": [layer.descriptor(MEDIA_LAYER)],
        "annotations": labels,
    });
    let manifest = Blob::new(serde_json::to_vec(&manifest).expect("JSON values serialise"));
    let name = reference.to_string();
    let mut descriptor = manifest.descriptor(MEDIA_MANIFEST);
    descriptor["annotations"] = json!({
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": reference.tag,
    });
    let index = json!({ "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [descriptor] });
    let docker = json!([{ "Config": config.path(), "RepoTags": [name], "Layers": [layer.path()] }]);

    let mut tar = tar::Builder::new(out);
    let mut file = |path: &str, bytes: &[u8]| -> std::io::Result<()> {
        tar.append(&header(path, bytes.len(), 0o644, tar::EntryType::Regular), bytes)
    };
    file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    file("index.json", &serde_json::to_vec(&index).expect("JSON values serialise"))?;
    file("manifest.json", &serde_json::to_vec(&docker).expect("JSON values serialise"))?;
    for dir in ["blobs/", "blobs/sha256/"] {
        tar.append(&header(dir, 0, 0o755, tar::EntryType::Directory), std::io::empty())?;
    }
    let mut blobs = [&config, &layer, &manifest];
    blobs.sort_by(|a, b| a.hex.cmp(&b.hex));
    for blob in blobs {
        tar.append(&header(&blob.path(), blob.bytes.len(), 0o644, tar::EntryType::Regular), &*blob.bytes)?;
    }
    tar.into_inner()?.flush()?;
    Ok(Written { manifest_digest: manifest.digest(), config_digest: config.digest(), reference: reference.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn facts() -> Facts {
        Facts { abi_version: 5, nics: vec!["service".into()], disks: vec![], memory: 64 << 20 }
    }

    fn entries(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for e in tar::Archive::new(archive).entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            out.insert(path, bytes);
        }
        out
    }

    #[test]
    fn names_get_a_domain_and_a_tag() {
        let r = |s| Reference::parse(s).map(|r| r.to_string());
        assert_eq!(r("hello").unwrap(), "localhost/hello:latest");
        assert_eq!(r("hello:1.0").unwrap(), "localhost/hello:1.0");
        assert_eq!(r("registry.example:5000/team/web").unwrap(), "registry.example:5000/team/web:latest");
        assert_eq!(r("team/web").unwrap(), "localhost/team/web:latest");
        assert_eq!(r("localhost/web:1").unwrap(), "localhost/web:1");
        assert_eq!(r("registry.example:5000/team/web:v2").unwrap(), "registry.example:5000/team/web:v2");
        for bad in ["", "Hello", "a b", "x:", "/x", "x//y", "x:-1", "-x"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_same_input_gives_the_same_bytes() {
        let reference = Reference::parse("hello").unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let wa = write(b"\x7fELF not really", &facts(), &reference, &mut a).unwrap();
        let wb = write(b"\x7fELF not really", &facts(), &reference, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(wa, wb);
        let mut c = Vec::new();
        let wc = write(b"\x7fELF another", &facts(), &reference, &mut c).unwrap();
        assert_ne!(wa.manifest_digest, wc.manifest_digest);
    }

    #[test]
    fn the_archive_is_an_oci_layout_and_a_docker_archive() {
        let elf = b"\x7fELF the image".to_vec();
        let mut archive = Vec::new();
        let w = write(&elf, &facts(), &Reference::parse("web:2").unwrap(), &mut archive).unwrap();
        let files = entries(&archive);
        let json = |p: &str| -> Value { serde_json::from_slice(&files[p]).unwrap() };
        let blob = |digest: &str| files[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))].clone();
        // Every blob is named by its digest.
        for (path, bytes) in files.iter().filter(|(p, _)| p.starts_with("blobs/sha256/") && p.len() > 13) {
            assert_eq!(path.trim_start_matches("blobs/sha256/"), hex(&Sha256::digest(bytes)), "{path}");
        }
        assert_eq!(json("oci-layout")["imageLayoutVersion"], "1.0.0");
        let index = json("index.json");
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], w.manifest_digest);
        assert_eq!(m["annotations"]["io.containerd.image.name"], "localhost/web:2");
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "2");
        let manifest: Value = serde_json::from_slice(&blob(&w.manifest_digest)).unwrap();
        assert_eq!(manifest["annotations"][LABEL_NICS], "service");
        assert_eq!(manifest["annotations"][LABEL_ABI], "5");
        assert_eq!(manifest["config"]["digest"], w.config_digest);
        let config: Value = serde_json::from_slice(&blob(&w.config_digest)).unwrap();
        assert_eq!(config["config"]["Entrypoint"], json!([IMAGE_PATH]));
        assert_eq!(config["config"]["Labels"][LABEL_MEMORY], "64M");
        assert_eq!(config["config"]["Labels"][LABEL_DISKS], "");
        assert_eq!(config["architecture"], "amd64");
        // The one layer holds the ELF, executable, and nothing else.
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
        assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest);
        let layer = blob(&layer_digest);
        let mut paths = Vec::new();
        for e in tar::Archive::new(&*layer).entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            if path == IMAGE_PATH.trim_start_matches('/') {
                assert_eq!(e.header().mode().unwrap(), 0o755);
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).unwrap();
                assert_eq!(bytes, elf);
            }
            paths.push(path);
        }
        assert_eq!(paths, ["skiff/", "skiff/image"]);
        // The docker view names the same blobs.
        let docker = json("manifest.json");
        assert_eq!(docker[0]["RepoTags"], json!(["localhost/web:2"]));
        assert_eq!(docker[0]["Config"], format!("blobs/sha256/{}", w.config_digest.trim_start_matches("sha256:")));
        assert_eq!(docker[0]["Layers"][0], format!("blobs/sha256/{}", layer_digest.trim_start_matches("sha256:")));
    }
}
