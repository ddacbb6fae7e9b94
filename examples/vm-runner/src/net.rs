//! `--net tap=NAME[,mac=MAC][,bridge=BR][,mtu=N]`: virtio-net devices over taps.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use vm_memory::GuestMemoryMmap;

use virtkit_net::NetSpec;
use virtkit_vcpu::Vm;

use crate::devices::DeviceManager;
use crate::virtio::{attach_virtio, VirtioDevices};

/// Creates each tap (attached to its bridge when given) and puts a virtio-net
/// device for it on the MMIO bus.
pub fn attach_nets(
    vm: &Vm,
    devices: &mut DeviceManager,
    mem: &GuestMemoryMmap,
    nets: &[NetSpec],
    out: &mut VirtioDevices,
) -> Result<()> {
    for spec in nets {
        let net = spec
            .build()
            .with_context(|| format!("--net tap={}", spec.tap))?;
        log::info!("--net tap={} mac={}", spec.tap, net.mac());
        attach_virtio(vm, devices, mem, Arc::new(Mutex::new(net)), out)?;
    }
    Ok(())
}
