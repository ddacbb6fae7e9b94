//! vCPU and VM state save/restore on the host's /dev/kvm (`kvm_` tests): a guest counting
//! in a register is paused, saved with its memory, and resumed in a brand-new VM, where it
//! goes on counting from where it stopped. Also through JSON, and the refusals.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use virtkit_boot::cpu::{setup_entry, EntryMode};
use virtkit_memory::{GuestAddress, GuestMemoryBuilder, GuestRam};
use virtkit_vcpu::{
    BusDevice, Buses, KvmVm, ThreadOptions, Vcpu, VcpuError, VcpuState, Vm, VmConfig, VmState,
};
use vm_memory::Bytes;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "kvm_ tests need /dev/kvm (read-write)"
    );
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const CODE: u64 = 0x10_0000;
/// xor eax, eax; 1: inc rax; mov dx, 0x3f0; out dx, eax; jmp 1
const COUNTER: [u8; 12] = [
    0x31, 0xc0, 0x48, 0xff, 0xc0, 0x66, 0xba, 0xf0, 0x03, 0xef, 0xeb, 0xf6,
];

/// Records each 32-bit value written to its port.
struct Counter(Arc<Mutex<Vec<u32>>>);
impl BusDevice for Counter {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        self.0.lock().unwrap().push(u32::from_le_bytes(b));
    }
}

fn buses() -> (Arc<Buses>, Arc<Mutex<Vec<u32>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut b = Buses::default();
    b.pio
        .insert(Arc::new(Mutex::new(Counter(log.clone()))), 0x3f0, 1)
        .unwrap();
    (Arc::new(b), log)
}

fn wait_for(log: &Mutex<Vec<u32>>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while log.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "the guest wrote too little");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn vm(ram: &GuestRam) -> KvmVm {
    let vm = KvmVm::new(VmConfig { irqchip: true }).unwrap();
    vm.register_memory(ram).unwrap();
    vm
}

fn ram_bytes(ram: &GuestRam) -> Vec<u8> {
    let mut v = vec![0u8; ram.size() as usize];
    ram.memory().read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

#[test]
fn kvm_a_paused_guest_resumes_in_a_new_vm_where_it_stopped() {
    let _g = serial();
    let ram = GuestMemoryBuilder::from_mib(4).build().unwrap();
    let vm_a = vm(&ram);
    ram.memory()
        .write_slice(&COUNTER, GuestAddress(CODE))
        .unwrap();
    let entry = setup_entry(ram.memory(), EntryMode::Long64, CODE, 0x7000).unwrap();
    let vcpu = vm_a.create_kvm_vcpu(0, 1).unwrap();
    vcpu.set_entry(&entry).unwrap();
    let (b, log) = buses();
    let h = vcpu.start(b, ThreadOptions::default()).unwrap();
    wait_for(&log, 20);
    assert!(matches!(
        h.save_state(Duration::from_secs(5)),
        Err(VcpuError::NotPaused(0))
    ));
    assert!(h.pause(Duration::from_secs(10)).unwrap());
    let state = h.save_state(Duration::from_secs(10)).unwrap();
    let vm_state = Vm::save_state(&vm_a).unwrap();
    let memory = ram_bytes(&ram);
    let last = *log.lock().unwrap().last().unwrap();
    h.stop();
    h.join().unwrap();
    if let VcpuState::Kvm(k) = &state {
        assert!(k.msr_count() > 5, "the MSRs KVM lists for saving");
        assert!((CODE..CODE + COUNTER.len() as u64).contains(&k.rip()));
    } else {
        panic!("not a KVM state");
    }

    // Through JSON, as a snapshot stores it.
    let state: VcpuState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    let vm_state: VmState =
        serde_json::from_str(&serde_json::to_string(&vm_state).unwrap()).unwrap();

    let ram_b = GuestMemoryBuilder::from_mib(4).build().unwrap();
    ram_b
        .memory()
        .write_slice(&memory, GuestAddress(0))
        .unwrap();
    let vm_b = vm(&ram_b);
    Vm::restore_state(&vm_b, &vm_state).unwrap();
    let mut vcpu_b = vm_b.create_kvm_vcpu(0, 1).unwrap();
    Vcpu::restore_state(&mut vcpu_b, &state).unwrap();
    let (b, log_b) = buses();
    let h = vcpu_b.start(b, ThreadOptions::default()).unwrap();
    wait_for(&log_b, 5);
    h.stop();
    h.join().unwrap();
    let v = log_b.lock().unwrap().clone();
    assert_eq!(
        v[0],
        last + 1,
        "the count goes on from {last}: {:?}",
        &v[..5]
    );
    assert_eq!(v[1], last + 2);
}

#[test]
fn kvm_states_are_refused_where_they_do_not_fit() {
    let _g = serial();
    let ram = GuestMemoryBuilder::from_mib(2).build().unwrap();
    let vm_a = vm(&ram);
    let v0 = vm_a.create_kvm_vcpu(0, 2).unwrap();
    let mut v1 = vm_a.create_kvm_vcpu(1, 2).unwrap();
    let s0 = Vcpu::save_state(&v0).unwrap();
    let e = Vcpu::restore_state(&mut v1, &s0).unwrap_err();
    assert!(e.to_string().contains("another vCPU id"), "{e}");
    let fake = VcpuState::Fake { id: 1, position: 0 };
    assert!(Vcpu::restore_state(&mut v1, &fake).is_err());
    assert!(Vm::restore_state(&vm_a, &VmState::Fake).is_err());
    let no_irqchip = KvmVm::new(VmConfig { irqchip: false }).unwrap();
    let e = Vm::save_state(&no_irqchip).unwrap_err();
    assert!(e.to_string().contains("irqchip"), "{e}");
    // A corrupt state file is a serde error, not a panic.
    assert!(serde_json::from_str::<VcpuState>(r#"{"hypervisor":"kvm","id":0}"#).is_err());
}
