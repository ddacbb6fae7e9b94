//! `lab-kvm-hold`: keeps one idle KVM VM (in-kernel irqchip, one vCPU that never
//! runs) open until killed, then prints `KVM-HOLD ready` once it exists.
//!
//! Why: creating the first VM on a host, or destroying the last one, flips static keys
//! in the host kernel (KVM's preempt notifiers, whose key patches `__schedule`; the
//! LAPIC's `apic_sw_disabled`). Each flip rewrites kernel text with `text_poke_bp`:
//! INT3 on the site, then IPIs that wait for every other CPU. In the lab (the host
//! kernel runs on QEMU's TCG with emulated SVM) that rewrite sometimes never completes:
//! every CPU keeps trapping on the INT3 in `__schedule` while the VMM's thread waits in
//! `smp_call_function_many_cond`, which the lab kernel reports as a soft lockup of the
//! VMM (or reports nothing, when both CPUs are caught). One VM held open for the whole
//! payload keeps those keys on, so the boots' own VMs never flip them.
//! `virtkit_lab::with_kvm_hold` starts it before a payload's boots.

use std::process::ExitCode;

fn main() -> ExitCode {
    let kvm = match kvm_ioctls::Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("lab-kvm-hold: /dev/kvm: {e}");
            return ExitCode::from(1);
        }
    };
    let vm = match kvm.create_vm() {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("lab-kvm-hold: KVM_CREATE_VM: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = vm.create_irq_chip() {
        eprintln!("lab-kvm-hold: KVM_CREATE_IRQCHIP: {e}");
        return ExitCode::from(1);
    }
    let _vcpu = match vm.create_vcpu(0) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("lab-kvm-hold: KVM_CREATE_VCPU: {e}");
            return ExitCode::from(1);
        }
    };
    println!("KVM-HOLD ready");
    loop {
        // SAFETY: pause() has no arguments and only waits for a signal.
        unsafe { libc::pause() };
    }
}
