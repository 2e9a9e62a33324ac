//! The host's clock: the one place idgate reads the time it verifies credentials
//! at. Plugins have no clock; they get this value as an argument.

/// Seconds since the Unix epoch (0 if the clock is set before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
