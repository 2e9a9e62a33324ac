//! A string that must not leak: credentials and session tokens.

use std::fmt;

/// A secret string. Its `Debug` shows only that it is there, so a secret
/// inside a struct that is debug-printed (or in an error) stays out of logs;
/// the value is reached only through [`Secret::expose`], on purpose.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that sends or stores it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes (safe to show: it says nothing of the content).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<7 bytes>)");
        assert_eq!(s.expose(), "hunter2");
    }
}
