//! Linux namespaces and container root filesystems.
//!
//! - [`namespace`]: the eight namespace types, creating them ([`namespace::unshare`]) and
//!   joining them by path ([`namespace::join`]); hostname.
//! - [`idmap`]: uid and gid maps for user namespaces.
//! - [`mountinfo`]: `/proc/<pid>/mountinfo` parsing; the mount that holds a path.
//! - [`rootfs`]: a container's root filesystem: propagation (the rootfs's parent mount
//!   made private when shared, so nothing the set-up mounts reaches the caller's
//!   namespace, and the configured propagation applied to the new `/` after the pivot),
//!   a bind of the rootfs,
//!   the config's mounts with every target resolved *inside* the rootfs
//!   (`openat2(RESOLVE_IN_ROOT)`, mounted through `/proc/self/fd/N`, so an image's
//!   `proc -> /` symlink cannot redirect a mount onto the host), `/dev` nodes and
//!   symlinks, `pivot_root` with the old root detached, masked and read-only paths.
//!
//! All of it runs through the [`Syscalls`] trait: [`LinuxSyscalls`] calls the kernel, and
//! `fake::RecordingSyscalls` (feature `test-utils`) records calls for tests without root.
//!
//! ```
//! use virtkit_namespaces::namespace::{clone_flags, NamespaceType};
//! use virtkit_namespaces::rootfs::parse_mount_options;
//!
//! let flags = clone_flags(&[NamespaceType::Mount, NamespaceType::Pid]);
//! assert_eq!(flags, libc::CLONE_NEWNS | libc::CLONE_NEWPID);
//!
//! let o = parse_mount_options(&["nosuid".into(), "ro".into(), "mode=755".into()]);
//! assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_RDONLY);
//! assert_eq!(o.data, "mode=755");
//! ```
#![deny(missing_docs)]

mod copy;
#[cfg(feature = "test-utils")]
pub mod fake;
pub mod idmap;
pub mod mount_options;
pub mod mountinfo;
pub mod namespace;
pub mod rootfs;
pub mod syscalls;
#[cfg(all(feature = "test-utils", feature = "oci"))]
pub mod testing;

pub use syscalls::{LinuxSyscalls, Syscalls};
