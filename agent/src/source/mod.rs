//! Sources observe the host. Today: the filesystem ([`files`]); package and runtime
//! sources join them with their own modules.

pub mod containers;
pub mod files;
pub mod hashing;
pub mod mountinfo;
pub mod packages;
pub mod rootfs;
pub mod runtime;
