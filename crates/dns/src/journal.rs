//! Zones kept on a disk (cargo feature `store`): each zone that changed at
//! run time (an UPDATE, a transfer from a primary) is written whole to a
//! [`skiff_store::Store`] under `dns/zone/` and its apex, and put back in
//! place of the built one at the next boot.
//!
//! The journal does no DNS: it stores [`Record`]s as
//! [`Record::encode`] writes them and hands them to
//! [`Server::load_zone`]. A write returns once the store's commit is
//! durable, so a front end that answers an UPDATE only after
//! [`Journal::keep`] returned never acknowledges a change a crash can
//! lose.
//!
//! ```ignore
//! let (journal, created) = Journal::open(disk).await?;
//! for restored in journal.restore(&mut server).await? { info!("{restored}"); }
//! ```

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use domain::base::name::Name;
use skiff_store::{BlockDevice, Options, Store, StoreError};

use crate::server::Server;
use crate::update::serial_gt;
use crate::zone::{Record, soa_serial};

/// The prefix of the keys the journal writes; the apex's wire form
/// (lower case) follows.
pub const KEY_PREFIX: &[u8] = b"dns/zone/";

/// The journal could not be opened or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The store failed.
    #[error("zone store: {0}")]
    Store(#[from] StoreError),
    /// The disk holds something that is not a store: it is not formatted
    /// over.
    #[error("the disk holds data that is not a Skiff store (not formatted over: give an empty or new file)")]
    Foreign,
    /// The records given do not start with an SOA.
    #[error("a zone to keep must start with its SOA record")]
    NoSoa,
}

/// What [`Journal::restore`] did with one stored zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The stored zone is served in place of the built one.
    Loaded {
        /// The zone's apex.
        zone: Name<Vec<u8>>,
        /// Its serial.
        serial: u32,
        /// Its records.
        records: usize,
    },
    /// The image's zone is newer than the stored one (a rebuilt image with
    /// a higher serial): the image's is served.
    Older {
        /// The zone's apex.
        zone: Name<Vec<u8>>,
        /// The stored serial.
        stored: u32,
        /// The image's serial.
        built: u32,
    },
    /// A stored zone that the server does not serve (and was not asked to
    /// accept): left on the disk, not served.
    Unknown {
        /// The zone's apex.
        zone: Name<Vec<u8>>,
    },
    /// A stored zone that does not decode or load: left on the disk, the
    /// image's zone served.
    Bad {
        /// The key it was stored under, as text.
        key: String,
        /// Why it cannot be served.
        why: String,
    },
}

impl Restored {
    /// Whether it is worth a warning (the stored zone is not served).
    pub fn is_problem(&self) -> bool {
        matches!(self, Restored::Bad { .. } | Restored::Unknown { .. })
    }
}

impl core::fmt::Display for Restored {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Restored::Loaded { zone, serial, records } => {
                write!(f, "zone {zone} restored from the disk: serial {serial}, {records} records")
            }
            Restored::Older { zone, stored, built } => {
                write!(
                    f,
                    "zone {zone} on the disk (serial {stored}) is older than the image's (serial {built}): serving the image's"
                )
            }
            Restored::Unknown { zone } => write!(f, "zone {zone} on the disk is not served by this image: ignored"),
            Restored::Bad { key, why } => write!(f, "stored zone {key} cannot be served ({why}): serving the image's"),
        }
    }
}

/// Zones kept in a store on a block device.
pub struct Journal<D: BlockDevice> {
    store: Store<D>,
}

impl<D: BlockDevice> core::fmt::Debug for Journal<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Journal").field("generation", &self.store.info().generation).finish()
    }
}

/// The store key of the zone at `apex`.
pub fn key(apex: &Name<[u8]>) -> Vec<u8> {
    let mut k = KEY_PREFIX.to_vec();
    k.extend(apex.as_slice().iter().map(u8::to_ascii_lowercase));
    k
}

impl<D: BlockDevice> Journal<D> {
    /// Opens the store on `dev`, or makes one when the device is new (its
    /// first two pages all zero: an empty file). Returns whether it was
    /// made. A device holding anything else is refused
    /// ([`JournalError::Foreign`]).
    pub async fn open(dev: D) -> Result<(Journal<D>, bool), JournalError> {
        // Read the superblock pages first: a device with a store opens, a
        // zeroed one is formatted, anything else is left alone.
        let sector = dev.sector_size() as usize;
        let mut head = alloc::vec![0u8; 8192usize.div_ceil(sector) * sector];
        let blank = if (head.len() / sector) as u64 <= dev.capacity() {
            dev.read(0, &mut head).await.map_err(|e| JournalError::Store(StoreError::Device(e)))?;
            head.iter().all(|&b| b == 0)
        } else {
            false
        };
        if blank {
            let store = Store::create(dev, Options::default()).await?;
            return Ok((Journal { store }, true));
        }
        match Store::open(dev, Options::default()).await {
            Ok(store) => Ok((Journal { store }, false)),
            Err(StoreError::NotAStore(_)) => Err(JournalError::Foreign),
            Err(e) => Err(e.into()),
        }
    }

    /// Keeps `records` (a whole zone, SOA first) on the disk; returns once
    /// they are durable. A zone already stored with a newer serial (a later
    /// change that overtook this one) is left as it is.
    pub async fn keep(&self, records: &[Record]) -> Result<(), JournalError> {
        let soa = records.first().filter(|r| r.rtype == domain::base::iana::Rtype::SOA).ok_or(JournalError::NoSoa)?;
        let serial = soa_serial(&soa.rdata).unwrap_or(0);
        let key = key(soa.owner.for_slice());
        let mut value = Vec::new();
        for r in records {
            r.encode(&mut value);
        }
        let mut tx = self.store.write().await?;
        if let Some(old) = tx.get(&key).await?
            && let Some(stored) = Record::decode_all(&old).and_then(|r| r.first().and_then(|s| soa_serial(&s.rdata)))
            && serial_gt(stored, serial)
        {
            drop(tx);
            // The newer zone holds this change too: wait until it is durable.
            self.store.sync().await?;
            return Ok(());
        }
        tx.put(&key, &value).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The stored zones: key and records (`None` where they do not decode).
    pub async fn zones(&self) -> Result<Vec<(Vec<u8>, Option<Vec<Record>>)>, JournalError> {
        let snapshot = self.store.snapshot();
        let mut scan = snapshot.scan(KEY_PREFIX);
        let mut out = Vec::new();
        while let Some(entry) = scan.next().await {
            let (k, v) = entry?;
            out.push((k, Record::decode_all(&v).filter(|r| !r.is_empty())));
        }
        Ok(out)
    }

    /// Puts every stored zone in place of the image's zone with the same
    /// apex, unless the image's is newer. Stored zones the server does not
    /// serve are loaded only when `accept` says so (the zones of a
    /// secondary, which the image does not carry).
    pub async fn restore(
        &self,
        server: &mut Server<'_>,
        accept: impl Fn(&Name<[u8]>) -> bool,
    ) -> Result<Vec<Restored>, JournalError> {
        let mut out = Vec::new();
        for (k, records) in self.zones().await? {
            let label = key_text(&k);
            let Some(records) = records else {
                out.push(Restored::Bad { key: label, why: "records do not decode".into() });
                continue;
            };
            let zone = records[0].owner.clone();
            let stored = soa_serial(&records[0].rdata).unwrap_or(0);
            match server.catalog().zone(zone.for_slice()) {
                Some(built) if serial_gt(built.serial(), stored) => {
                    out.push(Restored::Older { zone, stored, built: built.serial() });
                    continue;
                }
                None if !accept(zone.for_slice()) => {
                    out.push(Restored::Unknown { zone });
                    continue;
                }
                _ => {}
            }
            match server.load_zone(&records) {
                Ok(()) => out.push(Restored::Loaded { zone, serial: stored, records: records.len() }),
                Err(e) => out.push(Restored::Bad { key: label, why: e.to_string() }),
            }
        }
        Ok(out)
    }

    /// Makes the last commit confirmed (see `skiff_store::Store::sync`):
    /// for a service going idle or stopping.
    pub async fn sync(&self) -> Result<(), JournalError> {
        Ok(self.store.sync().await?)
    }

    /// Confirms the last commit and gives the device back.
    pub async fn close(self) -> Result<D, JournalError> {
        Ok(self.store.close().await?)
    }

    /// The store underneath.
    pub fn store(&self) -> &Store<D> {
        &self.store
    }
}

/// A stored key as text: the apex when it is one.
fn key_text(k: &[u8]) -> String {
    let tail = &k[KEY_PREFIX.len().min(k.len())..];
    match Name::from_octets(tail.to_vec()) {
        Ok(n) => n.to_string(),
        Err(_) => String::from_utf8_lossy(k).into_owned(),
    }
}
