//! A fresh PostgreSQL database per test, made from the admin URL in
//! `DRIFTWATCH_TEST_POSTGRES` (`.ci/postgres.sh` starts a private cluster and sets it)
//! and dropped when the test ends, so tests never see each other's rows.
//!
//! Databases are made and dropped with `psql`, the client every PostgreSQL install
//! ships: the tests crate needs no database driver of its own.

use crate::{missing_prerequisite, run};
use std::process::Command;

/// The environment variable holding the admin URL.
pub const URL_VAR: &str = "DRIFTWATCH_TEST_POSTGRES";

/// A database of its own for one test; dropped (with its connections) on drop.
pub struct TestDatabase {
    admin_url: String,
    /// Its name (random).
    pub name: String,
    /// A URL that connects to it.
    pub url: String,
}

impl TestDatabase {
    /// Creates a fresh database, or says why it cannot: `None` (with the reason printed)
    /// when `DRIFTWATCH_TEST_POSTGRES` is unset or `psql` is missing outside CI; under
    /// `CI=true` that is a failure.
    pub fn create() -> Option<TestDatabase> {
        let Ok(admin_url) = std::env::var(URL_VAR) else {
            missing_prerequisite(&format!(
                "{URL_VAR} is not set (run the tests under `.ci/postgres.sh run …`)"
            ));
            return None;
        };
        if which("psql").is_none() {
            missing_prerequisite("psql is not installed (apt-get install postgresql)");
            return None;
        }
        let name = unique_name();
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        let url = with_database(&admin_url, &name);
        Some(TestDatabase {
            admin_url,
            name,
            url,
        })
    }

    /// Runs one SQL statement in this database; its output rows, `|`-separated.
    pub fn query(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let output = run(Command::new("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.admin_url,
                "-c",
            ])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )));
        if !output.status.success() {
            eprintln!(
                "cannot drop test database {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// A database name no other test (of this run or a concurrent one) uses: the process,
/// a counter and the clock.
fn unique_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "driftwatch_test_{}_{}_{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with its database (the last path segment) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let rest = base.split_once("://").map_or(base, |(_, rest)| rest);
    let prefix_len = base.len() - rest.len();
    let host_part = rest.split_once('/').map_or(rest, |(host, _)| host);
    let mut out = format!("{}{host_part}/{name}", &base[..prefix_len]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

fn psql(url: &str, sql: &str) -> String {
    let output = run(Command::new("psql").args([
        "-X",
        "-q",
        "-tA",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        url,
        "-c",
        sql,
    ]));
    assert!(
        output.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The path of `tool` on `PATH`, if any.
pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgresql://u@h/postgres?sslmode=disable", "t2"),
            "postgresql://u@h/t2?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t3"), "postgres://u@h/t3");
    }
}
