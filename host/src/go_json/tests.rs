//! Go's answers for the bodies Coder's agents and attackers send.

use super::*;

const AWS: GoStruct = GoStruct {
    type_name: "agentsdk.AWSInstanceIdentityToken",
    fields: &["signature", "document", "agent_name"],
};

fn ok(body: &str) -> Vec<Option<String>> {
    decode(body.as_bytes(), &AWS).unwrap_or_else(|e| panic!("{body}: {e}"))
}

fn err(body: &[u8]) -> String {
    decode(body, &AWS).expect_err(&String::from_utf8_lossy(body))
}

#[test]
fn reads_the_first_value_only() {
    let v = ok(r#"{"signature":"s","document":"d"} trailing {garbage"#);
    assert_eq!(v, vec![Some("s".into()), Some("d".into()), None]);
    assert_eq!(ok(r#" {"signature":"s"}}"#)[0].as_deref(), Some("s"));
    // Null at the top decodes to the zero struct.
    assert_eq!(ok("null x"), vec![None, None, None]);
}

#[test]
fn keys_fold_as_go_folds_them() {
    let v = ok(r#"{"SIGNATURE":"a","Document":"b","\u017fignature":"c","agent_name":"n"}"#);
    assert_eq!(v, vec![Some("c".into()), Some("b".into()), Some("n".into())]);
    // The Kelvin sign upper-cases to itself, not to K: no match.
    let kelvin = GoStruct {
        type_name: "t.T",
        fields: &["k"],
    };
    assert_eq!(decode("{\"\u{212a}\":\"x\"}".as_bytes(), &kelvin).unwrap(), vec![None]);
    // Escapes in keys are decoded before matching.
    assert_eq!(ok(r#"{"\u0073ignature":"s"}"#)[0].as_deref(), Some("s"));
}

#[test]
fn null_keeps_and_repeats_overwrite() {
    assert_eq!(ok(r#"{"signature":"a","signature":null}"#)[0].as_deref(), Some("a"));
    assert_eq!(ok(r#"{"signature":"a","signature":"b"}"#)[0].as_deref(), Some("b"));
}

#[test]
fn type_errors_name_the_field_like_go() {
    assert_eq!(
        err(br#"{"signature":5,"document":true}"#),
        "json: cannot unmarshal number into Go struct field AWSInstanceIdentityToken.signature of type string"
    );
    assert_eq!(
        err(br#"{"agent_name":{"a":[1]}}"#),
        "json: cannot unmarshal object into Go struct field AWSInstanceIdentityToken.agent_name of type string"
    );
    assert_eq!(
        err(b"[1,2]"),
        "json: cannot unmarshal array into Go value of type agentsdk.AWSInstanceIdentityToken"
    );
    assert_eq!(
        err(b"\"x\""),
        "json: cannot unmarshal string into Go value of type agentsdk.AWSInstanceIdentityToken"
    );
    assert_eq!(
        err(b"12abc"),
        "json: cannot unmarshal number into Go value of type agentsdk.AWSInstanceIdentityToken"
    );
    // A syntax error anywhere in the value wins over an earlier type error.
    assert_eq!(
        err(br#"{"signature":5,"x":[}"#),
        "invalid character '}' looking for beginning of value"
    );
}

#[test]
fn syntax_errors_in_gos_words() {
    for (body, want) in [
        (&b""[..], "EOF"),
        (b"  \n", "EOF"),
        (b"{", "unexpected EOF"),
        (br#"{"signature":"s""#, "unexpected EOF"),
        (b"x", "invalid character 'x' looking for beginning of value"),
        (
            b"{x",
            "invalid character 'x' looking for beginning of object key string",
        ),
        (br#"{"a" 1}"#, "invalid character '1' after object key"),
        (br#"{"a":1 2}"#, "invalid character '2' after object key:value pair"),
        (br#"{"a":[1 2]}"#, "invalid character '2' after array element"),
        (br#"{"a":[1,]}"#, "invalid character ']' looking for beginning of value"),
        (br#"{"a":-}"#, "invalid character '}' in numeric literal"),
        (
            br#"{"a":1.}"#,
            "invalid character '}' after decimal point in numeric literal",
        ),
        (br#"{"a":1e}"#, "invalid character '}' in exponent of numeric literal"),
        (br#"{"a":tru}"#, "invalid character '}' in literal true (expecting 'e')"),
        (br#"{"a":nul}"#, "invalid character '}' in literal null (expecting 'l')"),
        (b"{\"a\":\"x\ny\"}", "invalid character '\\n' in string literal"),
        (br#"{"a":"\q"}"#, "invalid character 'q' in string escape code"),
        (
            br#"{"a":"\u12g4"}"#,
            "invalid character 'g' in \\u hexadecimal character escape",
        ),
        (
            b"{\"a\":\x01}",
            "invalid character '\\x01' looking for beginning of value",
        ),
        (b"\xff", "invalid character '\u{ff}' looking for beginning of value"),
        (
            b"{\"a\":1,}",
            "invalid character '}' looking for beginning of object key string",
        ),
    ] {
        assert_eq!(err(body), want, "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn strings_keep_bad_utf8_and_lone_surrogates_as_replacements() {
    let body = b"{\"agent_name\":\"a\xe2\x82b\xff\"}";
    assert_eq!(
        decode(body, &AWS).unwrap()[2].as_deref(),
        Some("a\u{fffd}\u{fffd}b\u{fffd}")
    );
    assert_eq!(
        ok(r#"{"agent_name":"\ud800\u0041\ud83d\ude00\udc00"}"#)[2].as_deref(),
        Some("\u{fffd}A\u{1f600}\u{fffd}")
    );
    assert_eq!(
        ok(r#"{"agent_name":"\"\\\/\b\f\n\r\t"}"#)[2].as_deref(),
        Some("\"\\/\u{8}\u{c}\n\r\t")
    );
}

#[test]
fn depth_is_gos_and_costs_no_stack() {
    let nested = |n: usize| format!("{{\"x\":{}{}}}", "[".repeat(n), "]".repeat(n));
    // The object itself is one level: 9,999 arrays inside it make 10,000.
    assert!(decode(nested(MAX_DEPTH - 1).as_bytes(), &AWS).is_ok());
    assert_eq!(
        err(nested(MAX_DEPTH).as_bytes()),
        "invalid character '[' exceeded max depth"
    );
    // Far past any recursion limit, unknown members of every shape are skipped.
    let wide = r#"{"x":{"a":[1,-2.5e+3,true,false,null,"s",{},[]],"b":{"c":{}}},"signature":"s"}"#;
    assert_eq!(ok(wide)[0].as_deref(), Some("s"));
}
