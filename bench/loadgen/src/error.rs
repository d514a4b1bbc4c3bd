//! One error type: everything here ends as a sentence for the person running the
//! benchmark.

use std::fmt;

/// Why the load generator stopped.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }

    /// A closure for `map_err` that puts `context` before the cause.
    pub fn context<E: fmt::Display>(context: impl Into<String>) -> impl FnOnce(E) -> Error {
        let context = context.into();
        move |cause| Error(format!("{context}: {cause}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The load generator's result.
pub type Result<T> = std::result::Result<T, Error>;
