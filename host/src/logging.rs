//! Where log lines go and how they look: `tracing` to stderr, `pretty` (one
//! line per event) or `json`.
//!
//! Log lines carry values that came from requests and plugins (refusal
//! reasons, instance IDs, agent names). A reader — a person, `grep`, a log
//! shipper — splits events at newlines, so a value with a newline in it could
//! print a second, forged event (`idgate::audit ... outcome="ok"`), and one with
//! an ANSI escape could repaint the terminal. The pretty format therefore
//! escapes every control character in every value and message, so one event is
//! always one line; the JSON format escapes them by construction. Colour is used
//! only when stderr is a terminal (and `NO_COLOR` is unset), so files and pipes
//! get no escape codes.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::Field;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::EnvFilter;

/// Sets up `tracing`: `json` or `pretty` (default), filtered by `RUST_LOG`
/// (default `info`, sqlx's notices hidden). Logs go to stderr. A second call
/// keeps the first set-up.
pub fn init(format: Option<&str>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        Some("json") => builder.json().try_init(),
        _ => builder
            .with_ansi(colour_on_stderr())
            .fmt_fields(one_line_fields())
            .try_init(),
    };
}

/// Colour only for a person at a terminal.
fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The pretty format's fields, `name=value` separated by spaces, as
/// tracing-subscriber's default writes them, with every value escaped by
/// [`one_line`]. Strings recorded as values print quoted and escaped (their
/// `Debug`); values recorded with `%` (their `Display`) print bare, their
/// control characters escaped.
pub fn one_line_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    tracing_subscriber::fmt::format::debug_fn(|writer: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug| {
        let text = format!("{value:?}");
        match field.name() {
            "message" => write!(writer, "{}", one_line(&text)),
            // Fields bridged from the `log` crate, as the default formatter hides them.
            name if name.starts_with("log.") => Ok(()),
            name => write!(writer, "{name}={}", one_line(&text)),
        }
    })
    .delimited(" ")
}

/// `text` with every character that could break or repaint a line escaped as
/// Rust's `escape_debug` writes it (`\n`, `\r`, `\t`, `\u{1b}`, ...): control
/// characters (C0, DEL, C1), Unicode's line and paragraph separators, and the
/// bidirectional overrides that make a line read differently than it is.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    fn breaks(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(breaks) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if breaks(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn escapes_what_breaks_a_line_and_nothing_else() {
        assert_eq!(one_line("plain \"quoted\" é ✓"), "plain \"quoted\" é ✓");
        assert_eq!(
            one_line("a\nb\r\tc\u{1b}[31md\u{7f}\u{85}\u{2028}\u{202e}"),
            "a\\nb\\r\\tc\\u{1b}[31md\\u{7f}\\u{85}\\u{2028}\\u{202e}"
        );
    }

    #[test]
    fn a_forged_line_in_a_value_stays_inside_its_event() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(one_line_fields())
            .finish();
        let forged =
            "bad CN\n2026-01-01T00:00:00Z  INFO idgate::audit: authentication outcome=\"ok\" status=200\u{1b}[2K";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "idgate::audit", instance_id = forged, reason = %forged, "authentication {}", forged);
        });
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(out.contains(r"reason=bad CN\n2026"), "{out}");
        assert!(out.contains(r#"instance_id="bad CN\n2026"#), "{out}");
        assert!(out.contains(r"authentication bad CN\n2026"), "{out}");
    }
}
