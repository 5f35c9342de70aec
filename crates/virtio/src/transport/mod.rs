//! Transports: how a driver reaches a device's status, features, queues,
//! notifications and configuration space.

pub mod mmio;
pub mod pci;

use crate::{DeviceType, Error, features, status};

/// Where a queue's three parts live (device addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueAddrs {
    /// The descriptor table.
    pub desc: u64,
    /// The available (driver) ring.
    pub avail: u64,
    /// The used (device) ring.
    pub used: u64,
}

/// A transport, as a driver uses it.
pub trait Transport {
    /// The kind of device behind it.
    fn device_type(&self) -> DeviceType;
    /// A VIRTIO 1.x device (`VERSION_1` required, modern queue layout);
    /// `false` for legacy virtio-mmio v1 (page-aligned legacy layout).
    fn modern(&self) -> bool;
    /// The feature bits the device offers.
    fn device_features(&mut self) -> u64;
    /// Tells the device the features the driver accepts.
    fn set_driver_features(&mut self, features: u64);
    /// The device status byte.
    fn status(&mut self) -> u8;
    /// Writes the device status byte (0 resets the device).
    fn set_status(&mut self, status: u8);
    /// The largest size queue `queue` may have (0: no such queue).
    fn max_queue_size(&mut self, queue: u16) -> u16;
    /// Gives queue `queue` of `size` entries to the device.
    fn setup_queue(&mut self, queue: u16, size: u16, addrs: QueueAddrs) -> Result<(), Error>;
    /// Tells the device that queue `queue` has new buffers.
    fn notify(&mut self, queue: u16);
    /// Reads and acknowledges the interrupt status (bit 0: a used ring
    /// changed; bit 1: the configuration changed).
    fn ack_interrupt(&mut self) -> u8;
    /// The configuration generation (changes while the device updates it).
    fn config_generation(&mut self) -> u32;
    /// Reads a byte of the device-specific configuration.
    fn read_config8(&mut self, offset: usize) -> u8;
    /// Reads an aligned 16-bit field of the configuration.
    fn read_config16(&mut self, offset: usize) -> u16;
    /// Reads an aligned 32-bit field of the configuration.
    fn read_config32(&mut self, offset: usize) -> u32;
}

/// Reads a 64-bit configuration field as two 32-bit halves, again if the
/// device changed its configuration in between (a bounded number of times).
pub fn read_config64<T: Transport + ?Sized>(t: &mut T, offset: usize) -> u64 {
    let mut value = 0;
    for _ in 0..8 {
        let before = t.config_generation();
        value = u64::from(t.read_config32(offset)) | (u64::from(t.read_config32(offset + 4)) << 32);
        if t.config_generation() == before {
            break;
        }
    }
    value
}

/// Resets the device and negotiates features: the device must be
/// `expected` and offer every `required` bit (and `VERSION_1` on a modern
/// transport); of `wanted`, the offered ones are accepted. Returns the
/// accepted features; the driver then sets up its queues and calls
/// [`finish_init`]. On an error the device is marked `FAILED`.
pub fn negotiate<T: Transport + ?Sized>(
    t: &mut T,
    expected: DeviceType,
    required: u64,
    wanted: u64,
) -> Result<u64, Error> {
    let device = t.device_type();
    if device != expected {
        return Err(Error::WrongDevice { expected, found: device });
    }
    reset(t)?;
    t.set_status(status::ACKNOWLEDGE);
    t.set_status(status::ACKNOWLEDGE | status::DRIVER);
    let offered = t.device_features();
    let required = if t.modern() { required | features::VERSION_1 } else { required };
    let missing = required & !offered;
    if missing != 0 {
        t.set_status(status::FAILED);
        return Err(Error::MissingFeatures { device, missing });
    }
    let accepted = offered & (required | wanted);
    t.set_driver_features(accepted);
    if t.modern() {
        t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        if t.status() & status::FEATURES_OK == 0 {
            t.set_status(status::FAILED);
            return Err(Error::FeaturesRejected { device, features: accepted });
        }
    }
    Ok(accepted)
}

/// Tells the device the driver is ready (after its queues are set up).
pub fn finish_init<T: Transport + ?Sized>(t: &mut T) {
    let s = t.status();
    t.set_status(s | status::DRIVER_OK);
}

/// Resets the device and waits (a bounded number of reads) until it says
/// it has.
pub fn reset<T: Transport + ?Sized>(t: &mut T) -> Result<(), Error> {
    t.set_status(0);
    for _ in 0..1_000_000 {
        if t.status() == 0 {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err(Error::ResetTimeout)
}
