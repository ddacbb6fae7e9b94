//! Tests on the host's real /dev/kvm with tiny hand-assembled guests that go through the same
//! boot path as Linux (virtkit-boot's GDT, page tables and entry state). Guest code runs at about
//! a million instructions per second here, so guests are a few dozen instructions and every
//! wait has a generous timeout. The tests share the vCPU kick signal, so they are serialized.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use virtkit_boot::cpu::{setup_entry, EntryMode};
use virtkit_boot::{layout, LinuxBoot};
use virtkit_memory::{GuestAddress, GuestMemoryBuilder, GuestRam};
use virtkit_vcpu::{
    regs, BusDevice, Buses, KvmVcpu as Vcpu, KvmVm as Vm, ThreadOptions, VcpuOutcome, VmConfig,
};
use vm_memory::Bytes;

static SERIAL: Mutex<()> = Mutex::new(());
const CODE: u64 = 0x10_0000;
const LONG: Duration = Duration::from_secs(60);

fn serial() -> MutexGuard<'static, ()> {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "kvm_ tests need /dev/kvm (read-write)"
    );
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records every access; reads return `fill`.
struct Recorder {
    log: Arc<Mutex<Vec<Access>>>,
    fill: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    Read(u64, usize),
    Write(u64, Vec<u8>),
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(self.fill);
        self.log
            .lock()
            .unwrap()
            .push(Access::Read(offset, data.len()));
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(Access::Write(offset, data.to_vec()));
    }
}

fn recorder(fill: u8) -> (Arc<Mutex<Recorder>>, Arc<Mutex<Vec<Access>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    (
        Arc::new(Mutex::new(Recorder {
            log: log.clone(),
            fill,
        })),
        log,
    )
}

fn vm_with(ram: &GuestRam, irqchip: bool) -> Vm {
    let vm = Vm::new(VmConfig { irqchip }).unwrap();
    vm.register_memory(ram).unwrap();
    vm
}

/// A vCPU entering `code` at CODE in `mode` through virtkit-boot's entry setup.
fn guest(ram: &GuestRam, vm: &Vm, id: u8, cpus: u8, mode: EntryMode, code: &[u8]) -> Vcpu {
    ram.memory().write_slice(code, GuestAddress(CODE)).unwrap();
    let entry = setup_entry(ram.memory(), mode, CODE, 0x7000).unwrap();
    let vcpu = vm.create_kvm_vcpu(id, cpus).unwrap();
    vcpu.set_entry(&entry).unwrap();
    vcpu
}

fn run_to_end(vcpu: Vcpu, buses: Buses) -> VcpuOutcome {
    let h = vcpu
        .start(Arc::new(buses), ThreadOptions::default())
        .unwrap();
    let deadline = Instant::now() + LONG;
    while !h.is_finished() {
        assert!(
            Instant::now() < deadline,
            "guest did not finish in {LONG:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    h.join().unwrap()
}

fn u32s(log: &[Access]) -> Vec<u32> {
    log.iter()
        .filter_map(|a| match a {
            Access::Write(_, d) if d.len() == 4 => {
                Some(u32::from_le_bytes(d[..].try_into().unwrap()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn kvm_long_mode_state_pio_mmio_and_hlt() {
    let _g = serial();
    let ram = GuestMemoryBuilder::from_mib(8).build().unwrap();
    let vm = vm_with(&ram, false);
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0xf0, 0x03,             // mov dx, 0x3f0
        0x0f, 0x20, 0xc0, 0xef,             // mov rax, cr0; out dx, eax
        0x0f, 0x20, 0xd8, 0xef,             // mov rax, cr3; out dx, eax
        0x0f, 0x20, 0xe0, 0xef,             // mov rax, cr4; out dx, eax
        0xb9, 0x80, 0x00, 0x00, 0xc0,       // mov ecx, 0xc0000080 (EFER)
        0x0f, 0x32,                         // rdmsr (clobbers edx)
        0x66, 0xba, 0xf0, 0x03, 0xef,       // mov dx, 0x3f0; out dx, eax
        0x48, 0xbe, 0, 0, 0x30, 0, 0, 0, 0, 0,  // mov rsi, 0x300000
        0xc7, 0x06, 0xbe, 0xba, 0xfe, 0xca, // mov dword [rsi], 0xcafebabe
        0x48, 0xbb, 0, 0, 0, 0xd0, 0, 0, 0, 0,  // mov rbx, 0xd0000000
        0xc7, 0x43, 0x08, 0x78, 0x56, 0x34, 0x12, // mov dword [rbx+8], 0x12345678
        0x8b, 0x43, 0x10,                   // mov eax, [rbx+0x10]
        0xef,                               // out dx, eax
        0xc6, 0x43, 0x01, 0xab,             // mov byte [rbx+1], 0xab
        0xb0, 0x11, 0xe6, 0x80,             // mov al, 0x11; out 0x80, al
        0x66, 0xb8, 0x33, 0x22,             // mov ax, 0x2233
        0x66, 0xba, 0x82, 0x00, 0x66, 0xef, // mov dx, 0x82; out dx, ax
        0xe4, 0x84,                         // in al, 0x84
        0xe6, 0x85,                         // out 0x85, al
        0xf4,                               // hlt
    ];
    let vcpu = guest(&ram, &vm, 0, 1, EntryMode::Long64, &code);
    let (regs_dev, regs_log) = recorder(0);
    let (port80, port_log) = recorder(0x5a);
    let (mmio, mmio_log) = recorder(0xc3);
    let mut buses = Buses::default();
    buses.pio.insert(regs_dev, 0x3f0, 1).unwrap();
    buses.pio.insert(port80, 0x80, 8).unwrap();
    buses.mmio.insert(mmio, 0xd000_0000, 0x1000).unwrap();

    assert_eq!(run_to_end(vcpu, buses), VcpuOutcome::Halted);

    let vals = u32s(&regs_log.lock().unwrap());
    assert_eq!(vals.len(), 5, "{vals:x?}");
    let (cr0, cr3, cr4, efer) = (vals[0], vals[1], vals[2], vals[3]);
    assert_eq!(cr0 & 0x8000_0001, 0x8000_0001, "CR0.PG and PE: {cr0:#x}");
    assert_eq!(u64::from(cr3), layout::PML4_START);
    assert_ne!(cr4 & 0x20, 0, "CR4.PAE: {cr4:#x}");
    assert_eq!(efer & 0x500, 0x500, "EFER.LME|LMA: {efer:#x}");
    assert_eq!(vals[4], 0xc3c3_c3c3, "MMIO read value echoed");
    let stored: u32 = ram.memory().read_obj(GuestAddress(0x30_0000)).unwrap();
    assert_eq!(stored, 0xcafe_babe, "identity map covers RAM above 2 MiB");
    assert_eq!(
        *mmio_log.lock().unwrap(),
        vec![
            Access::Write(8, vec![0x78, 0x56, 0x34, 0x12]),
            Access::Read(0x10, 4),
            Access::Write(1, vec![0xab]),
        ]
    );
    assert_eq!(
        *port_log.lock().unwrap(),
        vec![
            Access::Write(0, vec![0x11]),
            Access::Write(2, vec![0x33, 0x22]),
            Access::Read(4, 1),
            Access::Write(5, vec![0x5a]),
        ]
    );
}

#[test]
fn kvm_triple_fault_is_shutdown() {
    let _g = serial();
    let ram = GuestMemoryBuilder::from_mib(4).build().unwrap();
    let vm = vm_with(&ram, false);
    // ud2 with an empty IDT: #UD -> #GP -> #DF -> triple fault.
    let vcpu = guest(&ram, &vm, 0, 1, EntryMode::Long64, &[0x0f, 0x0b]);
    assert_eq!(run_to_end(vcpu, Buses::default()), VcpuOutcome::Shutdown);
}

#[test]
fn kvm_triple_fault_summary_says_where_the_guest_was() {
    use virtkit_vcpu::{Vcpu as _, VmExit};
    let _g = serial();
    let ram = GuestMemoryBuilder::from_mib(4).build().unwrap();
    let vm = vm_with(&ram, false);
    let mut vcpu = guest(&ram, &vm, 0, 1, EntryMode::Long64, &[0x0f, 0x0b]);
    let deadline = Instant::now() + LONG;
    loop {
        assert!(Instant::now() < deadline, "no shutdown in {LONG:?}");
        match vcpu.run().unwrap() {
            VmExit::Shutdown => break,
            VmExit::Interrupted => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
    let s = vcpu.save_state().unwrap().summary();
    // The faulting ud2 is at CODE (or just past it); long mode: PG and PE in CR0,
    // LMA in EFER.
    let field = |name: &str| {
        let v = s
            .split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {s}"));
        u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
    };
    assert!((CODE..=CODE + 2).contains(&field("rip=")), "{s}");
    assert_eq!(field("cr0=") & 0x8000_0001, 0x8000_0001, "{s}");
    assert_ne!(field("efer=") & 0x400, 0, "{s}");
}

#[test]
fn kvm_pvh_entry_is_flat_protected_mode() {
    let _g = serial();
    let ram = GuestMemoryBuilder::from_mib(4).build().unwrap();
    let vm = vm_with(&ram, false);
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0xf0, 0x03,       // mov dx, 0x3f0
        0x0f, 0x20, 0xc0, 0xef,       // mov eax, cr0; out dx, eax
        0x89, 0xd8, 0xef,             // mov eax, ebx; out dx, eax
        0x8c, 0xc8, 0xef,             // mov eax, cs; out dx, eax
        0xb8, 0x00, 0x00, 0x20, 0x00, // mov eax, 0x200000
        0xc7, 0x00, 0x44, 0x33, 0x22, 0x11, // mov dword [eax], 0x11223344
        0xf4,
    ];
    let vcpu = guest(&ram, &vm, 0, 1, EntryMode::Protected32, &code);
    let (dev, log) = recorder(0);
    let mut buses = Buses::default();
    buses.pio.insert(dev, 0x3f0, 1).unwrap();
    assert_eq!(run_to_end(vcpu, buses), VcpuOutcome::Halted);
    let vals = u32s(&log.lock().unwrap());
    assert_eq!(vals.len(), 3);
    assert_eq!(vals[0] & 0x8000_0001, 1, "PE on, paging off");
    assert_eq!(vals[1], 0x7000, "rbx carries the boot info");
    assert_eq!(vals[2] & 0xffff, 0x10, "CS is __BOOT_CS");
    let v: u32 = ram.memory().read_obj(GuestAddress(0x20_0000)).unwrap();
    assert_eq!(v, 0x1122_3344);
}

#[test]
fn kvm_cpuid_apic_ids_per_vcpu() {
    let _g = serial();
    let ram = GuestMemoryBuilder::from_mib(4).build().unwrap();
    let vm = vm_with(&ram, false);
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0xf0, 0x03,       // mov dx, 0x3f0
        0xb8, 0x01, 0, 0, 0,          // mov eax, 1
        0x0f, 0xa2,                   // cpuid (clobbers edx)
        0x66, 0xba, 0xf0, 0x03,       // mov dx, 0x3f0
        0x89, 0xd8, 0xef,             // mov eax, ebx; out dx, eax
        0x89, 0xc8, 0xef,             // mov eax, ecx; out dx, eax
        0xb8, 0, 0, 0, 0x40,          // mov eax, 0x40000000
        0x0f, 0xa2,                   // cpuid
        0x66, 0xba, 0xf0, 0x03,       // mov dx, 0x3f0
        0x89, 0xd8, 0xef,             // mov eax, ebx; out dx, eax ("KVMK")
        0xf4,
    ];
    let mut handles = Vec::new();
    let mut logs = Vec::new();
    for id in 0..2u8 {
        let vcpu = guest(&ram, &vm, id, 2, EntryMode::Long64, &code);
        let (dev, log) = recorder(0);
        let mut buses = Buses::default();
        buses.pio.insert(dev, 0x3f0, 1).unwrap();
        logs.push(log);
        handles.push(
            vcpu.start(Arc::new(buses), ThreadOptions::default())
                .unwrap(),
        );
    }
    for h in handles {
        let deadline = Instant::now() + LONG;
        while !h.is_finished() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(h.join().unwrap(), VcpuOutcome::Halted);
    }
    for (id, log) in logs.iter().enumerate() {
        let v = u32s(&log.lock().unwrap());
        assert_eq!(v.len(), 3);
        assert_eq!(v[0] >> 24, id as u32, "APIC id in CPUID.1:EBX");
        assert_ne!(v[1] & (1 << 31), 0, "hypervisor bit");
        assert_eq!(&v[2].to_le_bytes(), b"KVMK");
    }
}

#[test]
fn kvm_spinning_vcpu_pause_resume_stop() {
    let _g = serial();
    let ram = GuestMemoryBuilder::from_mib(4).build().unwrap();
    let vm = vm_with(&ram, false);
    #[rustfmt::skip]
    let code = [
        0x48, 0xbe, 0, 0, 0x30, 0, 0, 0, 0, 0, // mov rsi, 0x300000
        0x48, 0xff, 0x06,                      // inc qword [rsi]
        0xeb, 0xfb,                            // jmp back
    ];
    let vcpu = guest(&ram, &vm, 0, 1, EntryMode::Long64, &code);
    let exit_evt = virtkit_vcpu::EventFd::new(0).unwrap();
    let h = vcpu
        .start(
            Arc::new(Buses::default()),
            ThreadOptions {
                exit_evt: Some(exit_evt.try_clone().unwrap()),
                ..ThreadOptions::default()
            },
        )
        .unwrap();
    let counter = || {
        ram.memory()
            .read_obj::<u64>(GuestAddress(0x30_0000))
            .unwrap()
    };
    let wait_above = |v: u64| {
        let deadline = Instant::now() + LONG;
        while counter() <= v {
            assert!(Instant::now() < deadline, "guest counter stuck at {v}");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    wait_above(0);
    assert!(h.pause(LONG).unwrap());
    assert!(h.is_paused());
    let c1 = counter();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(), c1, "paused vCPU must not run");
    h.resume();
    wait_above(c1);
    assert!(!h.is_finished());
    h.stop();
    assert_eq!(h.join().unwrap(), VcpuOutcome::Stopped);
    assert_eq!(exit_evt.read().unwrap(), 1);
}

#[test]
fn kvm_irqchip_vm_sets_lint_and_cpuid() {
    let _g = serial();
    let ram = GuestMemoryBuilder::from_mib(4).build().unwrap();
    let vm = vm_with(&ram, true);
    let vcpu = vm.create_kvm_vcpu(0, 4).unwrap();
    let lapic = vcpu.fd().get_lapic().unwrap();
    assert_eq!(regs::lint_modes(&lapic), (7, 4), "LINT0 ExtINT, LINT1 NMI");
    let cpuid = vcpu.fd().get_cpuid2(256).unwrap();
    let l1 = virtkit_vcpu::cpuid::find(&cpuid, 1, 0).unwrap();
    assert_ne!(l1.ecx & (1 << 31), 0);
    let tsc_deadline = vm.kvm().check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    eprintln!("KVM_CAP_TSC_DEADLINE_TIMER: {tsc_deadline}");
    assert_eq!(
        l1.ecx & (1 << 24) != 0,
        tsc_deadline,
        "TSC-deadline bit follows the cap"
    );
    let fpu = vcpu.fd().get_fpu().unwrap();
    assert_eq!(fpu.fcw, 0x37f);
    let evt = virtkit_vcpu::EventFd::new(0).unwrap();
    vm.register_irqfd(&evt, virtkit_memory::Irq(5)).unwrap();
    vm.register_mmio_ioeventfd(&evt, GuestAddress(0xd000_0050), None)
        .unwrap();
    assert!(vm.max_vcpus() >= 1);
}

/// A minimal ELF64 executable: one PT_LOAD of `code` at physical `paddr`, entry there.
fn elf_image(code: &[u8], paddr: u64) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&paddr.to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    f.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // phnum
    f.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    let off = 64u64 + 56;
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    f.extend_from_slice(&off.to_le_bytes());
    f.extend_from_slice(&paddr.to_le_bytes()); // vaddr
    f.extend_from_slice(&paddr.to_le_bytes()); // paddr
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&0x1000u64.to_le_bytes());
    f.extend_from_slice(code);
    f
}

#[test]
fn kvm_linux_boot_path_zero_page() {
    let _g = serial();
    let ram = GuestMemoryBuilder::from_mib(16).build().unwrap();
    let vm = vm_with(&ram, false);
    // Reads boot_params through rsi: the "HdrS" magic, the e820 entry count, the command line
    // pointer and its first 4 bytes, and the initrd address.
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0xf0, 0x03,             // mov dx, 0x3f0
        0x8b, 0x86, 0x02, 0x02, 0, 0, 0xef, // mov eax, [rsi+0x202]; out
        0x0f, 0xb6, 0x86, 0xe8, 0x01, 0, 0, 0xef, // movzx eax, byte [rsi+0x1e8]; out
        0x8b, 0x9e, 0x28, 0x02, 0, 0,       // mov ebx, [rsi+0x228]
        0x89, 0xd8, 0xef,                   // mov eax, ebx; out
        0x8b, 0x03, 0xef,                   // mov eax, [rbx]; out
        0x8b, 0x86, 0x18, 0x02, 0, 0, 0xef, // mov eax, [rsi+0x218] (ramdisk_image); out
        0xf4,
    ];
    let mut kernel = tempfile::NamedTempFile::new().unwrap();
    kernel.write_all(&elf_image(&code, 0x20_0000)).unwrap();
    let mut initrd = tempfile::NamedTempFile::new().unwrap();
    initrd.write_all(&[0x42; 5000]).unwrap();
    let setup = LinuxBoot {
        kernel: kernel.path().into(),
        initrd: Some(initrd.path().into()),
        cmdline: "console=ttyS0 quiet".into(),
        cpus: 1,
        acpi: true,
        acpi_devices: vec![],
    }
    .load(&ram)
    .unwrap();
    assert_eq!(setup.kernel.kind, virtkit_boot::KernelKind::Elf64);
    let vcpu = vm.create_kvm_vcpu(0, 1).unwrap();
    vcpu.set_entry(&setup.entry).unwrap();
    let (dev, log) = recorder(0);
    let mut buses = Buses::default();
    buses.pio.insert(dev, 0x3f0, 1).unwrap();
    assert_eq!(run_to_end(vcpu, buses), VcpuOutcome::Halted);
    let v = u32s(&log.lock().unwrap());
    assert_eq!(v.len(), 5, "{v:x?}");
    assert_eq!(&v[0].to_le_bytes(), b"HdrS");
    assert_eq!(v[1], 3, "e820 entries for 16 MiB");
    assert_eq!(u64::from(v[2]), layout::CMDLINE_START);
    assert_eq!(&v[3].to_le_bytes(), b"cons");
    let (initrd_addr, size) = setup.initrd.unwrap();
    assert_eq!(u64::from(v[4]), initrd_addr.0);
    assert_eq!(size, 5000);
    assert!(initrd_addr.0 + size <= 16 << 20);
    assert_eq!(initrd_addr.0 % 4096, 0);
}

/// Sets a shared flag on its first write, as a power-off port does.
struct PowerOff {
    flag: Arc<std::sync::atomic::AtomicBool>,
    writes: Arc<Mutex<u32>>,
}

impl BusDevice for PowerOff {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        *self.writes.lock().unwrap() += 1;
        self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn kvm_stop_flag_ends_the_vcpu_at_the_exit_that_set_it() {
    let _g = serial();
    let ram = GuestMemoryBuilder::from_mib(4).build().unwrap();
    let vm = vm_with(&ram, false);
    // 1: mov dx, 0x3b0; mov al, 0x34; out dx, al; jmp 1 (writes the port forever)
    let code = [0x66, 0xba, 0xb0, 0x03, 0xb0, 0x34, 0xee, 0xeb, 0xf7];
    let vcpu = guest(&ram, &vm, 0, 1, EntryMode::Long64, &code);
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(0));
    let mut buses = Buses::default();
    buses
        .pio
        .insert(
            Arc::new(Mutex::new(PowerOff {
                flag: flag.clone(),
                writes: writes.clone(),
            })),
            0x3b0,
            1,
        )
        .unwrap();
    let h = vcpu
        .start(
            Arc::new(buses),
            ThreadOptions {
                stop_flag: Some(flag),
                ..ThreadOptions::default()
            },
        )
        .unwrap();
    let deadline = Instant::now() + LONG;
    while !h.is_finished() {
        assert!(Instant::now() < deadline, "the vCPU did not stop by itself");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.join().unwrap(), VcpuOutcome::Stopped);
    assert_eq!(*writes.lock().unwrap(), 1, "the guest never ran again");
}
