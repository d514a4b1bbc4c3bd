//! Sources observe the host. Today: the filesystem ([`files`]); package and runtime
//! sources join them with their own modules.

pub mod files;
pub mod hashing;
pub mod packages;
pub mod rootfs;
pub mod runtime;
