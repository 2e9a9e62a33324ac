//! Reads a request body the way Go's `encoding/json` `Decoder.Decode` reads it
//! into a struct of string fields, because that is how Coder reads its
//! instance-identity bodies (`httpapi.Read`), and an agent must get the same
//! answer from idgate as from Coder for any body it sends.
//!
//! What that means, beyond "parse JSON":
//! - Only the first JSON value is read; whatever follows it is never looked at.
//! - Keys match field names exactly or case-insensitively (Go folds with
//!   `unicode.ToUpper`, so `ſ` matches `s` and `ı` matches `i`); unknown keys
//!   are skipped; a repeated key is applied again, in order.
//! - `null` leaves a field as it was; a number, bool, object or array where a
//!   string belongs is a type error, reported (the first one) after the whole
//!   value has been checked for syntax, which wins over type errors.
//! - Strings keep invalid UTF-8 and lone surrogate escapes as U+FFFD, one per
//!   byte that does not start a valid sequence, as Go does.
//! - Nesting deeper than Go's 10,000 levels is a syntax error; nothing recurses,
//!   so a deep body costs a bounded stack.
//!
//! Error texts are Go's, so the `detail` Coder would send is the one idgate sends.

/// Go's `maxNestingDepth`.
const MAX_DEPTH: usize = 10_000;

/// A Go struct whose fields are all `string`, as Coder's request types are.
#[derive(Debug, Clone, Copy)]
pub struct GoStruct {
    /// Go's name of the type, as errors print it (`agentsdk.AWSInstanceIdentityToken`).
    pub type_name: &'static str,
    /// The JSON names of its fields.
    pub fields: &'static [&'static str],
}

impl GoStruct {
    /// The struct's name without its package, as field errors print it.
    fn short_name(&self) -> &'static str {
        self.type_name.rsplit('.').next().unwrap_or(self.type_name)
    }

    /// The field a key sets: exact name first, then Go's case folding.
    fn field_of(&self, key: &str) -> Option<usize> {
        if let Some(i) = self.fields.iter().position(|f| *f == key) {
            return Some(i);
        }
        self.fields
            .iter()
            .position(|f| key.chars().map(fold).eq(f.chars().map(fold)))
    }
}

/// Go's `foldName`, one character: upper-cased by `unicode.ToUpper`. Only
/// ASCII field names are ever compared, so what matters is which characters
/// fold to ASCII: the ASCII letters, `ſ` (to `S`) and `ı` (to `I`). Anything
/// else stays non-ASCII and so can never equal a folded ASCII name.
fn fold(c: char) -> char {
    match c {
        '\u{17f}' => 'S',
        '\u{131}' => 'I',
        c => c.to_ascii_uppercase(),
    }
}

/// Decodes the first JSON value of `body` into `target`'s fields: `Ok` with each
/// field's value (`None` if no key set it, which Go leaves as `""`), or `Err`
/// with Go's error text.
pub fn decode(body: &[u8], target: &GoStruct) -> Result<Vec<Option<String>>, String> {
    let mut d = Decoder {
        bytes: body,
        pos: 0,
        target,
        values: vec![None; target.fields.len()],
        type_error: None,
    };
    d.skip_space();
    if d.pos == d.bytes.len() {
        return Err("EOF".into());
    }
    d.top_level()?;
    match d.type_error {
        Some(e) => Err(e),
        None => Ok(d.values),
    }
}

struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    target: &'a GoStruct,
    values: Vec<Option<String>>,
    /// Go saves the first type error and keeps going; syntax errors still win.
    type_error: Option<String>,
}

/// What a JSON value was, in Go's words for type errors.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Number,
    Bool,
    Null,
    Object,
    Array,
}

impl Kind {
    fn go_name(self) -> &'static str {
        match self {
            Kind::Str => "string",
            Kind::Number => "number",
            Kind::Bool => "bool",
            Kind::Null => "null",
            Kind::Object => "object",
            Kind::Array => "array",
        }
    }
}

impl Decoder<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    /// Go's `SyntaxError` for the byte at the cursor, or `unexpected EOF`.
    fn syntax(&self, context: &str) -> String {
        match self.peek() {
            Some(c) => format!("invalid character {} {context}", quote_char(c)),
            None => "unexpected EOF".into(),
        }
    }

    fn type_error(&mut self, kind: Kind, field: Option<&str>) {
        if self.type_error.is_some() {
            return;
        }
        self.type_error = Some(match field {
            Some(f) => format!(
                "json: cannot unmarshal {} into Go struct field {}.{f} of type string",
                kind.go_name(),
                self.target.short_name()
            ),
            None => format!(
                "json: cannot unmarshal {} into Go value of type {}",
                kind.go_name(),
                self.target.type_name
            ),
        });
    }

    fn top_level(&mut self) -> Result<(), String> {
        match self.peek() {
            Some(b'{') => self.object(),
            _ => match self.value(0)? {
                Kind::Null => Ok(()),
                kind => {
                    self.type_error(kind, None);
                    Ok(())
                }
            },
        }
    }

    /// The top-level object: each member either sets a field or is skipped.
    fn object(&mut self) -> Result<(), String> {
        self.pos += 1; // '{'
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.syntax("looking for beginning of object key string"));
            }
            let key = self.string()?;
            self.skip_space();
            if self.peek() != Some(b':') {
                return Err(self.syntax("after object key"));
            }
            self.pos += 1;
            self.skip_space();
            let field = self.target.field_of(&key);
            match (field, self.peek()) {
                (Some(i), Some(b'"')) => {
                    let s = self.string()?;
                    self.values[i] = Some(s);
                }
                (Some(i), _) => match self.value(1)? {
                    Kind::Null => {}
                    kind => self.type_error(kind, Some(self.target.fields[i])),
                },
                (None, _) => {
                    self.value(1)?;
                }
            }
            self.skip_space();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_space();
                }
                // The first value ends here; what follows is never read.
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("after object key:value pair")),
            }
        }
    }

    /// Checks one value's syntax and steps over it; `depth` is how many
    /// containers are already open around it. Nested objects and arrays are
    /// walked with an explicit stack, so depth costs heap, not stack.
    fn value(&mut self, depth: usize) -> Result<Kind, String> {
        let (kind, open) = match self.scalar_or_open()? {
            Scanned::Scalar(kind) => return Ok(kind),
            Scanned::Open(b'{') => (Kind::Object, b'{'),
            Scanned::Open(c) => (Kind::Array, c),
        };
        let mut stack = vec![open];
        // Right after an opener, the close may come at once.
        let mut just_opened = true;
        while let Some(&open) = stack.last() {
            self.skip_space();
            let closing = if open == b'{' { b'}' } else { b']' };
            if just_opened && self.peek() == Some(closing) {
                self.pos += 1;
                stack.pop();
                just_opened = false;
                if !self.after_element(&mut stack)? {
                    return Ok(kind);
                }
                continue;
            }
            just_opened = false;
            if open == b'{' {
                if self.peek() != Some(b'"') {
                    return Err(self.syntax("looking for beginning of object key string"));
                }
                self.string()?;
                self.skip_space();
                if self.peek() != Some(b':') {
                    return Err(self.syntax("after object key"));
                }
                self.pos += 1;
                self.skip_space();
            }
            match self.scalar_or_open()? {
                Scanned::Open(c) => {
                    if depth + stack.len() + 1 > MAX_DEPTH {
                        self.pos -= 1;
                        return Err(self.syntax("exceeded max depth"));
                    }
                    stack.push(c);
                    just_opened = true;
                }
                Scanned::Scalar(_) => {
                    if !self.after_element(&mut stack)? {
                        return Ok(kind);
                    }
                }
            }
        }
        Ok(kind)
    }

    /// After a member of the innermost open container: a comma (go on with
    /// the next member), or its close (pop, and look again one level out).
    /// `false` once the outermost container has closed.
    fn after_element(&mut self, stack: &mut Vec<u8>) -> Result<bool, String> {
        loop {
            let Some(&open) = stack.last() else {
                return Ok(false);
            };
            self.skip_space();
            let (closing, context) = if open == b'{' {
                (b'}', "after object key:value pair")
            } else {
                (b']', "after array element")
            };
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    return Ok(true);
                }
                Some(c) if c == closing => {
                    self.pos += 1;
                    stack.pop();
                }
                _ => return Err(self.syntax(context)),
            }
        }
    }

    /// One scalar (checked and stepped over) or the opener of a container.
    fn scalar_or_open(&mut self) -> Result<Scanned, String> {
        match self.peek() {
            Some(c @ (b'{' | b'[')) => {
                self.pos += 1;
                Ok(Scanned::Open(c))
            }
            Some(b'"') => self.string().map(|_| Scanned::Scalar(Kind::Str)),
            Some(b't') => self.literal("true").map(|_| Scanned::Scalar(Kind::Bool)),
            Some(b'f') => self.literal("false").map(|_| Scanned::Scalar(Kind::Bool)),
            Some(b'n') => self.literal("null").map(|_| Scanned::Scalar(Kind::Null)),
            Some(b'-' | b'0'..=b'9') => self.number().map(|_| Scanned::Scalar(Kind::Number)),
            _ => Err(self.syntax("looking for beginning of value")),
        }
    }

    fn literal(&mut self, word: &'static str) -> Result<(), String> {
        self.pos += 1;
        for &expected in &word.as_bytes()[1..] {
            if self.peek() != Some(expected) {
                return Err(self.syntax(&format!("in literal {word} (expecting {})", quote_char(expected))));
            }
            self.pos += 1;
        }
        Ok(())
    }

    /// Go's number grammar; the value itself is never needed.
    fn number(&mut self) -> Result<(), String> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax("in numeric literal")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.syntax("after decimal point in numeric literal"));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.syntax("in exponent of numeric literal"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    /// A string at the cursor, unquoted as Go unquotes it.
    fn string(&mut self) -> Result<String, String> {
        self.pos += 1; // '"'
        let mut out = String::new();
        loop {
            let start = self.pos;
            while matches!(self.peek(), Some(c) if c >= 0x20 && c != b'"' && c != b'\\') {
                self.pos += 1;
            }
            push_lossy_like_go(&mut out, &self.bytes[start..self.pos]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                _ => return Err(self.syntax("in string literal")),
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), String> {
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                let unit = self.hex4()?;
                out.push(self.after_u_escape(unit));
                return Ok(());
            }
            _ => return Err(self.syntax("in string escape code")),
        };
        self.pos += 1;
        out.push(c);
        Ok(())
    }

    /// A `\u` unit: a high surrogate followed by a `\u` low one is one
    /// character; any other surrogate is U+FFFD, and what follows is read on
    /// its own (Go's `unquote`).
    fn after_u_escape(&mut self, unit: u16) -> char {
        if !(0xD800..=0xDFFF).contains(&unit) {
            return char::from_u32(u32::from(unit)).unwrap_or('\u{fffd}');
        }
        if (0xD800..0xDC00).contains(&unit) && self.bytes[self.pos..].starts_with(b"\\u") {
            let save = self.pos;
            self.pos += 2;
            if let Ok(low) = self.hex4() {
                if (0xDC00..=0xDFFF).contains(&low) {
                    let c = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                    return char::from_u32(c).unwrap_or('\u{fffd}');
                }
            }
            self.pos = save;
        }
        '\u{fffd}'
    }

    fn hex4(&mut self) -> Result<u16, String> {
        let mut unit = 0u16;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.syntax("in \\u hexadecimal character escape")),
            };
            unit = unit * 16 + u16::from(digit);
            self.pos += 1;
        }
        Ok(unit)
    }
}

enum Scanned {
    Scalar(Kind),
    Open(u8),
}

/// Appends raw string bytes, each byte that does not start a valid UTF-8
/// sequence replaced by U+FFFD, as Go's `utf8.DecodeRune` loop does (Rust's
/// lossy conversion would replace a truncated sequence once, Go per byte).
fn push_lossy_like_go(out: &mut String, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                out.push('\u{fffd}');
                bytes = &rest[1..];
            }
        }
    }
}

/// Go's `quoteChar`: the byte as a one-character Go-quoted literal in single
/// quotes (a byte above 0x7f is shown as the Latin-1 character, as Go does).
fn quote_char(c: u8) -> String {
    match c {
        b'\'' => r"'\''".into(),
        b'"' => "'\"'".into(),
        b'\\' => r"'\\'".into(),
        0x07 => r"'\a'".into(),
        0x08 => r"'\b'".into(),
        0x0c => r"'\f'".into(),
        b'\n' => r"'\n'".into(),
        b'\r' => r"'\r'".into(),
        b'\t' => r"'\t'".into(),
        0x0b => r"'\v'".into(),
        0x00..=0x1f | 0x7f => format!("'\\x{c:02x}'"),
        0x80..=0xa0 | 0xad => format!("'\\u{c:04x}'"),
        _ => format!("'{}'", char::from(c)),
    }
}

#[cfg(test)]
mod tests;
