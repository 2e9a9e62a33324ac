//! Where a claim is: a path into the token's claims, as the operator writes it.
//!
//! Two spellings:
//! - **dotted**, `kubernetes.io.pod.uid`: at each object any run of the
//!   remaining segments may be a member name (`kubernetes.io` or `kubernetes`),
//!   then the rest is looked up inside it. So member names that contain dots,
//!   as Kubernetes' `kubernetes.io` does, need no escaping. Dotted paths only
//!   descend into objects. A path that reaches a value in **more than one way**
//!   is ambiguous and refused ([`Ambiguous`]): a token carrying a top-level
//!   member `"kubernetes.io.namespace"` beside the nested namespace must not
//!   get to choose which one an allow-list reads.
//! - **JSON Pointer** (RFC 6901), starting with `/`: `/kubernetes.io/pod/uid`,
//!   exact, with `~1` for `/` and `~0` for `~` inside a name, and array indexes.
//!   Use it to name one member exactly where dotted names could be read two ways.

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

    /// The value at this path in `claims`, if there is one; [`Ambiguous`] if a
    /// dotted path reaches values in more than one way.
    pub fn find<'a>(&self, claims: &'a Value) -> Result<Option<&'a Value>, Ambiguous> {
        match &self.kind {
            Kind::Pointer => Ok(claims.pointer(&self.text)),
            Kind::Dotted(segments) => {
                let mut found = None;
                let mut ways = 0;
                reach(claims, segments, &mut found, &mut ways);
                match ways {
                    0 | 1 => Ok(found),
                    _ => Err(Ambiguous(self.text.clone())),
                }
            }
        }
    }
}

/// A dotted claim path that names more than one value in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguous(pub String);

impl std::fmt::Display for Ambiguous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "claim path {:?} matches the token in more than one way (a member name with dots and a nested path); \
             write it as a JSON Pointer",
            self.0
        )
    }
}

/// Every way `segments` reaches a value below `value`: counts them in `ways`
/// (stopping at two, which is enough to refuse) and keeps the first in `found`.
/// At most 2^15 splits of 16 segments, each a member lookup.
fn reach<'a>(value: &'a Value, segments: &[String], found: &mut Option<&'a Value>, ways: &mut u32) {
    if *ways > 1 {
        return;
    }
    if segments.is_empty() {
        *ways += 1;
        found.get_or_insert(value);
        return;
    }
    let Some(object) = value.as_object() else {
        return;
    };
    for end in 1..=segments.len() {
        if let Some(next) = object.get(&segments[..end].join(".")) {
            reach(next, &segments[end..], found, ways);
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
        ClaimPath::parse(path).unwrap().find(&k8s()).unwrap().cloned()
    }

    #[test]
    fn dotted_paths_find_members_with_dots() {
        assert_eq!(find("sub"), Some(json!("system:serviceaccount:agents:coder")));
        assert_eq!(find("kubernetes.io.pod.uid"), Some(json!("pod-uid")));
        assert_eq!(find("kubernetes.io.namespace"), Some(json!("agents")));
        assert_eq!(find("kubernetes.io.serviceaccount.name"), Some(json!("coder")));
        assert_eq!(find("kubernetes.io.pod.missing"), None);
        assert_eq!(find("kubernetes"), None);
        assert_eq!(find("list.0"), None, "dotted paths do not index arrays");
        assert_eq!(find("sub.x"), None);
    }

    #[test]
    fn a_dotted_path_matching_two_ways_is_ambiguous() {
        // `a.b` is both the member "a.b" and "b" inside "a".
        let path = ClaimPath::parse("a.b").unwrap();
        assert_eq!(path.find(&k8s()), Err(Ambiguous("a.b".into())));
        // The attack: a top-level dotted member beside the real nested one.
        let token = json!({
            "kubernetes.io": {"namespace": "evil"},
            "kubernetes.io.namespace": "agents",
        });
        let path = ClaimPath::parse("kubernetes.io.namespace").unwrap();
        assert!(path.find(&token).is_err());
        // Either one alone is found.
        assert_eq!(
            path.find(&json!({"kubernetes.io.namespace": "agents"})).unwrap(),
            Some(&json!("agents"))
        );
        assert_eq!(
            path.find(&json!({"kubernetes.io": {"namespace": "evil"}})).unwrap(),
            Some(&json!("evil"))
        );
        // A partial second way (no value at its end) is not a second match.
        let partial = json!({"kubernetes.io": {"pod": {}}, "kubernetes.io.namespace": "agents"});
        assert_eq!(path.find(&partial).unwrap(), Some(&json!("agents")));
        // A pointer names exactly one.
        assert_eq!(
            ClaimPath::parse("/kubernetes.io/namespace")
                .unwrap()
                .find(&token)
                .unwrap(),
            Some(&json!("evil"))
        );
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
