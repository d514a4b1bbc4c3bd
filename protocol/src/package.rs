//! Installed packages, as recorded in a baseline.
//!
//! On an immutable host any package change is drift: the image's package set is
//! recorded at bake time from the package database inside the root and compared on
//! every check.

use serde::{Deserialize, Serialize};

/// Which package database a package set was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageDb {
    /// Debian/Ubuntu: `/var/lib/dpkg/status`.
    Dpkg,
    /// RHEL family, SUSE: the rpm database (`rpmdb.sqlite` or BerkeleyDB `Packages`).
    Rpm,
    /// Alpine: `/lib/apk/db/installed`.
    Apk,
}

impl PackageDb {
    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            PackageDb::Dpkg => "dpkg",
            PackageDb::Rpm => "rpm",
            PackageDb::Apk => "apk",
        }
    }
}

/// One installed package.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Architecture (`amd64`, `x86_64`, `noarch`, `all`…); empty when the database has
    /// none.
    pub arch: String,
    /// Full version as the database spells it (`[epoch:]version[-release]`).
    pub version: String,
}

/// The package set of a root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSet {
    /// The database it was read from.
    pub db: PackageDb,
    /// Packages sorted by name, then architecture.
    pub packages: Vec<Package>,
    /// Packaged files that already differed from their package when the baseline was
    /// made (an image's edited configuration, say): the same difference on a host is
    /// the image, not drift. Sorted by path.
    #[serde(default)]
    pub accepted_mismatches: Vec<AcceptedMismatch>,
}

/// A packaged file's bake-time difference from its package record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AcceptedMismatch {
    /// The path as reports spell it.
    pub path: String,
    /// The package whose record it differs from.
    pub package: String,
    /// The file's digest at bake time (`None`: it was missing).
    pub observed: Option<String>,
}

impl PackageSet {
    /// Builds a set, sorting and de-duplicating so that the same database always gives
    /// the same set (baselines are deterministic).
    pub fn new(db: PackageDb, mut packages: Vec<Package>) -> Self {
        packages.sort();
        packages.dedup();
        PackageSet {
            db,
            packages,
            accepted_mismatches: Vec::new(),
        }
    }
}
