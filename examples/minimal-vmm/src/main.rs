//! minimal-vmm: boots a kernel with one virtio-blk disk through `virtkit-vmm` alone.
//!
//! ```text
//! minimal-vmm KERNEL DISK [INITRAMFS] [CMDLINE]
//! ```
//!
//! 1 vCPU, 128 MiB, COM1 on the terminal; the disk is `/dev/vda` (raw, or qcow2 when its
//! name ends in `.qcow2`). Exit status 0 when the guest powers off or reboots.

use virtkit_vmm::{DiskConfig, ImageType, VmConfig, Vmm};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kernel, disk, rest @ ..] = args.as_slice() else {
        eprintln!("usage: minimal-vmm KERNEL DISK [INITRAMFS] [CMDLINE]");
        std::process::exit(2);
    };
    let mut config = VmConfig::with_kernel(kernel);
    config.payload.initramfs = rest.first().map(Into::into);
    config.payload.cmdline = rest.get(1).cloned();
    config.disks = Some(vec![DiskConfig {
        path: Some(disk.into()),
        image_type: if disk.ends_with(".qcow2") {
            ImageType::Qcow2
        } else {
            ImageType::Raw
        },
        ..DiskConfig::default()
    }]);
    match Vmm::try_from(config).and_then(Vmm::run) {
        Ok(end) => eprintln!("minimal-vmm: {end}"),
        Err(e) => {
            eprintln!("minimal-vmm: error: {e}");
            std::process::exit(1);
        }
    }
}
