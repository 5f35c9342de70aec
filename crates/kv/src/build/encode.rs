//! ETags, gzip variants and the blob layout.

use super::walk::File;
use super::{BuildError, Summary, mime};
use crate::format::{ENTRY_LEN, HEADER_LEN, MAGIC, VERSION};
use flate2::Compression;
use flate2::write::GzEncoder;
use std::format;
use std::io::Write;
use std::vec::Vec;

/// Lays out `files` (sorted by key, keys unique) as a blob.
pub(super) fn encode(files: &[File]) -> Result<(Vec<u8>, Summary), BuildError> {
    let data_start =
        files.len().checked_mul(ENTRY_LEN).and_then(|n| n.checked_add(HEADER_LEN)).ok_or(BuildError::TooLarge)?;
    let mut table = Vec::with_capacity(data_start - HEADER_LEN);
    let mut data = Data { start: data_start, bytes: Vec::new(), content_types: Vec::new() };
    let mut summary = Summary { files: files.len(), bytes: 0, gzip_saved: 0, blob_len: 0 };

    for file in files {
        let content_type = mime::content_type_for(&file.key);
        let hash = fnv1a64(&file.body);
        let gzip = if mime::is_compressible(content_type) { gzip_if_smaller(file)? } else { None };

        table.extend(data.put(file.key.as_bytes())?);
        table.extend(data.put(&file.body)?);
        match &gzip {
            Some(gz) => table.extend(data.put(gz)?),
            None => table.extend([0; 8]),
        }
        table.extend(data.put_content_type(content_type)?);
        table.extend(data.put(format!("\"{hash:016x}\"").as_bytes())?);
        match &gzip {
            Some(_) => table.extend(data.put(format!("\"{hash:016x}-gz\"").as_bytes())?),
            None => table.extend([0; 8]),
        }
        table.extend(file.modified.to_le_bytes());

        summary.bytes += file.body.len() as u64;
        if let Some(gz) = &gzip {
            summary.gzip_saved += (file.body.len() - gz.len()) as u64;
        }
    }

    let blob_len = data_start.checked_add(data.bytes.len()).ok_or(BuildError::TooLarge)?;
    let mut blob = Vec::with_capacity(blob_len);
    blob.extend(MAGIC);
    blob.extend(VERSION.to_le_bytes());
    blob.extend(u32::try_from(files.len()).map_err(|_| BuildError::TooLarge)?.to_le_bytes());
    blob.extend(u32::try_from(blob_len).map_err(|_| BuildError::TooLarge)?.to_le_bytes());
    blob.extend(table);
    blob.extend(data.bytes);
    summary.blob_len = blob.len();
    Ok((blob, summary))
}

/// FNV-1a, 64 bits: not collision resistant against an adversary, but a
/// change of content changes it (a change of one byte always does), which
/// is all an ETag needs.
pub(super) fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME))
}

/// The file's body gzipped at best compression, if that is at least 10%
/// smaller.
fn gzip_if_smaller(file: &File) -> Result<Option<Vec<u8>>, BuildError> {
    if file.body.is_empty() {
        return Ok(None);
    }
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    let gz = encoder
        .write_all(&file.body)
        .and_then(|()| encoder.finish())
        .map_err(|source| BuildError::Io { path: file.source.clone(), source })?;
    let worth_it = gz.len().saturating_mul(10) <= file.body.len().saturating_mul(9);
    Ok(worth_it.then_some(gz))
}

/// The data area being written.
struct Data {
    /// Offset of the data area in the blob.
    start: usize,
    /// Its bytes so far.
    bytes: Vec<u8>,
    /// Content types already written, with their (offset, length) pairs.
    content_types: Vec<(&'static str, [u8; 8])>,
}

impl Data {
    /// Appends `bytes` and returns their (offset, length) pair.
    fn put(&mut self, bytes: &[u8]) -> Result<[u8; 8], BuildError> {
        let offset = self.start.checked_add(self.bytes.len()).ok_or(BuildError::TooLarge)?;
        let offset = u32::try_from(offset).map_err(|_| BuildError::TooLarge)?;
        let len = u32::try_from(bytes.len()).map_err(|_| BuildError::TooLarge)?;
        self.bytes.extend_from_slice(bytes);
        let mut pair = [0; 8];
        pair[..4].copy_from_slice(&offset.to_le_bytes());
        pair[4..].copy_from_slice(&len.to_le_bytes());
        Ok(pair)
    }

    /// Like [`put`](Self::put), writing each distinct content type once.
    fn put_content_type(&mut self, content_type: &'static str) -> Result<[u8; 8], BuildError> {
        if let Some(&(_, pair)) = self.content_types.iter().find(|(known, _)| *known == content_type) {
            return Ok(pair);
        }
        let pair = self.put(content_type.as_bytes())?;
        self.content_types.push((content_type, pair));
        Ok(pair)
    }
}

#[cfg(test)]
mod tests {
    use super::fnv1a64;

    #[test]
    fn fnv1a64_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
