//! `--jail`: composes virtkit-jail and virtkit-vmm. The VM is built inside the jail as
//! root (devices and files open), then the process drops to `--jail-user` and runs it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use virtkit_jail::{Jail, JailConfig};
use virtkit_vcpu::KvmHypervisor;
use virtkit_vmm::api::ApiServer;
use virtkit_vmm::{ConsoleMode, VmConfig, Vmm};

use crate::args::Args;

/// What the VMM itself needs beside guest RAM, under the jail's memory limit.
const VMM_OVERHEAD: u64 = 32 << 20;

/// Absolute, symlink-free paths: the jail binds each at the same path inside.
fn canonical(config: &mut VmConfig) -> anyhow::Result<()> {
    let canon = |p: &mut PathBuf| -> anyhow::Result<()> {
        *p = std::fs::canonicalize(&*p).with_context(|| format!("cannot open {}", p.display()))?;
        Ok(())
    };
    if let Some(k) = config.payload.kernel.as_mut() {
        canon(k)?;
    }
    if let Some(i) = config.payload.initramfs.as_mut() {
        canon(i)?;
    }
    for d in config.disks.iter_mut().flatten() {
        if d.backing_files {
            bail!("backing=on cannot be used with --jail (the backing files are not in the jail)");
        }
        if let Some(p) = d.path.as_mut() {
            canon(p)?;
        }
    }
    if config.serial.mode == ConsoleMode::File {
        if let Some(f) = config.serial.file.as_mut() {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&*f)
                .with_context(|| format!("cannot create serial file {}", f.display()))?;
            canon(f)?;
        }
    }
    Ok(())
}

/// The jail's config for `args` and the VM.
fn jail_config(args: &Args, root: &Path, config: &VmConfig) -> anyhow::Result<JailConfig> {
    let j = &args.jail;
    let id = j
        .jail_id
        .clone()
        .unwrap_or_else(|| format!("vm-runner-{}", std::process::id()));
    let (uid, gid) = j.jail_user;
    let mut jc = JailConfig::new(id, root, uid, gid);
    for (path, read_only) in config.host_files() {
        jc = jc.file(path, read_only);
    }
    jc.new_netns = j.jail_netns;
    jc.limits.memory_bytes = j.jail_memory.map(|m| m << 20);
    jc.limits.cpus = j.jail_cpus;
    jc.limits.pids = j.jail_pids;
    if let Some(limit) = jc.limits.memory_bytes {
        let need = config.memory.size + VMM_OVERHEAD;
        if need > limit {
            bail!(
                "the guest's {} MiB of memory do not fit the jail's memory limit of {} MiB (the VMM needs about {} MiB more)",
                config.memory.size >> 20,
                limit >> 20,
                VMM_OVERHEAD >> 20
            );
        }
    }
    Ok(jc)
}

/// Runs the VM of `config` jailed in `root`; the jailed VMM's exit status.
pub fn run(args: &Args, root: &Path, config: Option<VmConfig>) -> anyhow::Result<i32> {
    let Some(mut config) = config else {
        bail!("--jail needs --kernel (restoring a snapshot in a jail is not supported)");
    };
    canonical(&mut config)?;
    let api = match &args.api_socket {
        None => None,
        Some(s) => {
            let inside = s.strip_prefix(root).map_err(|_| {
                anyhow::anyhow!(
                    "with --jail, --api-socket must lie inside the jail root {}",
                    root.display()
                )
            })?;
            Some(Path::new("/").join(inside))
        }
    };
    let jc = jail_config(args, root, &config)?;
    let seccomp = args.seccomp;
    let status = Jail::new(jc)?.run(|inside| {
        let result = (|| -> anyhow::Result<String> {
            let hv = Arc::new(KvmHypervisor::default());
            let server = match &api {
                Some(sock) => Some(ApiServer::bind(sock, hv.clone())?.seccomp(seccomp)),
                None => None,
            };
            let vmm = Vmm::builder(config)
                .hypervisor(hv)
                .seccomp(seccomp)
                .build()?;
            inside.drop_privileges()?;
            Ok(match server {
                None => vmm.run()?.to_string(),
                Some(server) => match server.serve_vmm(vmm)? {
                    Some(end) => end.to_string(),
                    None => "VMM shut down through the API".to_string(),
                },
            })
        })();
        crate::report(result)
    })?;
    Ok(status)
}
