//! Watching trust material expire: which certificate a provider's current
//! chains run out with first, and how long is left.
//!
//! A plugin marks the certificates a chain made today needs as *current*
//! (contract 0.3.0's `trust`); the earliest `notAfter` among them is when that
//! provider starts refusing every credential unless new material is bundled or
//! configured. `/metrics` exports the time left, `/readyz` warns inside
//! `trust_warning_days`, `idgate plugins --trust` lists it all.

use crate::authenticate::Authenticator;
use crate::sandbox::TrustAnchor;

/// Default warning window: a month to bundle or configure new certificates.
pub const DEFAULT_WARNING_DAYS: u64 = 30;

/// The current anchor that expires first, if the provider has any.
pub fn earliest_current(anchors: &[TrustAnchor]) -> Option<&TrustAnchor> {
    anchors.iter().filter(|a| a.current).min_by_key(|a| a.not_after)
}

/// Per configured provider with current trust material: (provider, seconds
/// left at `now`, the anchor that expires first). Negative when it has expired.
pub fn time_left(auth: &Authenticator, now: i64) -> Vec<(String, i64, TrustAnchor)> {
    auth.configured()
        .filter_map(|(mount, configured)| {
            earliest_current(configured.trust()).map(|a| (mount.to_string(), a.not_after - now, a.clone()))
        })
        .collect()
}

/// Human-readable warnings for every provider whose current trust material
/// expires within the authenticator's warning window (or has expired).
pub fn warnings(auth: &Authenticator, now: i64) -> Vec<String> {
    let window = auth.trust_warning_secs();
    time_left(auth, now)
        .into_iter()
        .filter(|(_, left, _)| *left <= window)
        .map(|(provider, left, anchor)| {
            let when = idgate_plugin_kit::time::format_rfc3339(anchor.not_after);
            if left <= 0 {
                format!(
                    "{provider}: {} {} expired at {when}; its credentials are refused until new trust material is configured",
                    anchor.role, anchor.subject
                )
            } else {
                format!(
                    "{provider}: {} {} expires at {when}, in {} days",
                    anchor.role,
                    anchor.subject,
                    left / 86_400
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(subject: &str, not_after: i64, current: bool) -> TrustAnchor {
        TrustAnchor {
            subject: subject.into(),
            role: "intermediate".into(),
            origin: "built-in".into(),
            not_after,
            current,
        }
    }

    #[test]
    fn the_earliest_current_anchor_counts_and_historic_ones_do_not() {
        let anchors = [anchor("old", 10, false), anchor("a", 300, true), anchor("b", 200, true)];
        assert_eq!(earliest_current(&anchors).unwrap().subject, "b");
        assert!(earliest_current(&[anchor("old", 10, false)]).is_none());
        assert!(earliest_current(&[]).is_none());
    }
}
