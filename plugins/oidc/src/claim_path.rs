//! Where a claim is: a path into the token's claims, as the operator writes it.
//!
//! Two spellings:
//! - **dotted**, `kubernetes.io.pod.uid`: at each object the *longest* run of
//!   the remaining segments that is a member name is taken (`kubernetes.io`
//!   before `kubernetes`), then the rest is looked up inside it. So member names
//!   that contain dots, as Kubernetes' `kubernetes.io` does, need no escaping.
//!   Dotted paths only descend into objects.
//! - **JSON Pointer** (RFC 6901), starting with `/`: `/kubernetes.io/pod/uid`,
//!   exact, with `~1` for `/` and `~0` for `~` inside a name, and array indexes.
//!   Use it when longest-first would pick the wrong member.

use serde_json::Value;

/// Longest path accepted, bytes.
const MAX_PATH_LEN: usize = 256;
/// Most segments in a dotted path.
const MAX_SEGMENTS: usize = 16;

/// A checked claim path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    text: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dotted(Vec<String>),
    Pointer,
}

impl ClaimPath {
    /// Parses a path; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<ClaimPath, String> {
        if text.is_empty() {
            return Err("a claim path is empty".into());
        }
        if text.len() > MAX_PATH_LEN {
            return Err(format!("claim path {text:.40}… is over {MAX_PATH_LEN} bytes"));
        }
        let kind = if let Some(pointer) = text.strip_prefix('/') {
            // `~` must be followed by 0 or 1 (RFC 6901 section 3).
            let mut chars = pointer.chars();
            while let Some(c) = chars.next() {
                if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                    return Err(format!("claim path {text:?}: `~` must be followed by 0 or 1"));
                }
            }
            Kind::Pointer
        } else {
            let segments: Vec<String> = text.split('.').map(str::to_string).collect();
            if segments.iter().any(String::is_empty) {
                return Err(format!(
                    "claim path {text:?} has an empty segment (a leading, trailing or doubled dot)"
                ));
            }
            if segments.len() > MAX_SEGMENTS {
                return Err(format!("claim path {text:?} has over {MAX_SEGMENTS} segments"));
            }
            Kind::Dotted(segments)
        };
        Ok(ClaimPath {
            text: text.to_string(),
            kind,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path in `claims`, if there is one.
    pub fn find<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        match &self.kind {
            Kind::Pointer => claims.pointer(&self.text),
            Kind::Dotted(segments) => {
                let mut value = claims;
                let mut at = 0;
                while at < segments.len() {
                    let object = value.as_object()?;
                    let (next, end) = (at + 1..=segments.len())
                        .rev()
                        .find_map(|end| object.get(&segments[at..end].join(".")).map(|v| (v, end)))?;
                    value = next;
                    at = end;
                }
                Some(value)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn k8s() -> Value {
        json!({
            "sub": "system:serviceaccount:agents:coder",
            "kubernetes.io": {
                "namespace": "agents",
                "pod": {"name": "ws-1", "uid": "pod-uid"},
                "serviceaccount": {"name": "coder", "uid": "sa-uid"},
            },
            "a": {"b": "inner"},
            "a.b": "dotted",
            "list": ["x", "y"],
            "we/ird~": "escaped",
        })
    }

    fn find(path: &str) -> Option<Value> {
        ClaimPath::parse(path).unwrap().find(&k8s()).cloned()
    }

    #[test]
    fn dotted_paths_take_the_longest_member_first() {
        assert_eq!(find("sub"), Some(json!("system:serviceaccount:agents:coder")));
        assert_eq!(find("kubernetes.io.pod.uid"), Some(json!("pod-uid")));
        assert_eq!(find("kubernetes.io.namespace"), Some(json!("agents")));
        assert_eq!(find("kubernetes.io.serviceaccount.name"), Some(json!("coder")));
        assert_eq!(find("a.b"), Some(json!("dotted")));
        assert_eq!(find("kubernetes.io.pod.missing"), None);
        assert_eq!(find("kubernetes"), None);
        assert_eq!(find("list.0"), None, "dotted paths do not index arrays");
        assert_eq!(find("sub.x"), None);
    }

    #[test]
    fn pointers_are_exact() {
        assert_eq!(find("/kubernetes.io/pod/uid"), Some(json!("pod-uid")));
        assert_eq!(find("/a/b"), Some(json!("inner")));
        assert_eq!(find("/a.b"), Some(json!("dotted")));
        assert_eq!(find("/list/1"), Some(json!("y")));
        assert_eq!(find("/we~1ird~0"), Some(json!("escaped")));
        assert_eq!(find("/kubernetes/io"), None);
    }

    #[test]
    fn bad_paths_refused() {
        for bad in ["", ".", "a.", ".a", "a..b", "/a~", "/a~2"] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ClaimPath::parse("a.".repeat(16).trim_end_matches('.')).is_ok());
        assert!(ClaimPath::parse("a.".repeat(17).trim_end_matches('.')).is_err());
        assert!(ClaimPath::parse(&"a".repeat(257)).is_err());
    }
}
