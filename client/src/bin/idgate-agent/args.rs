//! The command line, parsed with `lexopt`: a dozen flags do not need clap's
//! weight in a binary meant for every VM and pod, and lexopt has no
//! dependencies. Environment fallbacks are Coder's (`CODER_AGENT_AUTH`,
//! `CODER_AGENT_URL`, `CODER_AGENT_NAME`); the environment is passed in, so
//! the tests do not touch the process's own.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use idgate_client::sources::aws::Pkcs7;
use lexopt::prelude::*;

/// What to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Print the help.
    Help,
    /// Print the version.
    Version,
    /// `token`: exchange and hand the token on.
    Token(Box<TokenArgs>),
}

/// `idgate-agent token`'s settings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TokenArgs {
    pub auth: String,
    pub agent_url: String,
    pub agent_name: Option<String>,
    pub mount: Option<String>,
    pub metadata_url: Option<String>,
    pub service_account: Option<String>,
    pub audience: Option<String>,
    pub token_file: Option<PathBuf>,
    pub aws_pkcs7: Option<Pkcs7>,
    /// `None`: keep trying (the default, as Coder's agent).
    pub timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub retry_all: bool,
    pub ca_file: Option<PathBuf>,
    pub allow_insecure_http: bool,
    pub output_file: Option<PathBuf>,
    pub quiet: bool,
    /// The command to exec after `--`, empty for none.
    pub command: Vec<OsString>,
}

pub const HELP: &str = "\
idgate-agent: exchange this machine's identity for a workspace agent session token

Usage: idgate-agent token [OPTIONS] [-- COMMAND [ARG]...]

Prints the session token on stdout (and nothing else there), or writes it to
--output-file, or runs COMMAND with it in CODER_AGENT_TOKEN.

Options:
  --auth SOURCE            aws-instance-identity | azure-instance-identity |
                           google-instance-identity | kubernetes |
                           github-actions | jwt-file        [env: CODER_AGENT_AUTH]
  --agent-url URL          the idgate (or Coder) server      [env: CODER_AGENT_URL]
  --agent-name NAME        the agent to authenticate as when the machine has
                           several (trimmed; blank = none)   [env: CODER_AGENT_NAME]
  --mount NAME             the idgate mount to post to (required for kubernetes,
                           github-actions and jwt-file; the clouds default to
                           Coder's endpoints)
  --metadata-url URL       the cloud metadata service (default: the documented
                           address; AWS also reads AWS_EC2_METADATA_SERVICE_ENDPOINT,
                           Google GCE_METADATA_HOST)
  --service-account NAME   Google service account (default: default)
  --audience AUD           Google or GitHub token audience (Google default: coder)
  --token-file PATH        kubernetes (default: the pod's service-account token)
                           or jwt-file token file, read again at every exchange
  --aws-pkcs7 FORM         also send the document's PKCS#7: pkcs7 | rsa2048
  --timeout DURATION       give up after this long (30s, 5m, 1h; default 0 =
                           keep trying, as Coder's agent does)
  --request-timeout DUR    each request's own timeout (default 10s)
  --retry-all              retry refusals too (a workspace being built answers 404)
  --ca-file PATH           PEM CA certificates trusted besides the system's
  --allow-insecure-http    allow plain http to a server that is not loopback
  --output-file PATH       write the token there (mode 0600, atomically) instead
                           of stdout
  -q, --quiet              do not report retries on stderr
  -h, --help               this help
  -V, --version            the version

Exit codes: 0 token, 1 refused or ambiguous, 2 usage or configuration,
3 gave up on an unreachable server or metadata service.
";

/// Parses `args` (without the program name); `env` looks up fallbacks.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, String> {
    let mut parser = lexopt::Parser::from_args(args);
    match parser.next().map_err(|e| e.to_string())? {
        None => Err("no command given (try `idgate-agent token --help`)".into()),
        Some(Short('h') | Long("help")) => Ok(Command::Help),
        Some(Short('V') | Long("version")) => Ok(Command::Version),
        Some(Value(v)) if v == "token" => parse_token(&mut parser, env).map_err(|e| e.to_string()),
        Some(other) => Err(format!("unknown command or option: {}", other.unexpected())),
    }
}

fn parse_token(parser: &mut lexopt::Parser, env: &dyn Fn(&str) -> Option<String>) -> Result<Command, lexopt::Error> {
    let mut a = TokenArgs::default();
    let (mut auth, mut agent_url, mut agent_name) = (None, None, None);
    loop {
        // A command follows `--`, and only `--`: a stray word is an error, not a program to run.
        if let Some(mut raw) = parser.try_raw_args() {
            if raw.peek() == Some(OsStr::new("--")) {
                raw.next();
                a.command = raw.collect();
                break;
            }
        }
        let Some(arg) = parser.next()? else { break };
        match arg {
            Long("auth") => auth = Some(string(parser)?),
            Long("agent-url") => agent_url = Some(string(parser)?),
            Long("agent-name") => agent_name = Some(string(parser)?),
            Long("mount") => a.mount = Some(string(parser)?),
            Long("metadata-url") => a.metadata_url = Some(string(parser)?),
            Long("service-account") => a.service_account = Some(string(parser)?),
            Long("audience") => a.audience = Some(string(parser)?),
            Long("token-file") => a.token_file = Some(parser.value()?.into()),
            Long("aws-pkcs7") => {
                let v = string(parser)?;
                a.aws_pkcs7 = Some(Pkcs7::parse(&v).ok_or_else(|| bad("--aws-pkcs7", &v, "pkcs7 or rsa2048"))?);
            }
            Long("timeout") => {
                let v = string(parser)?;
                let d = parse_duration(&v).ok_or_else(|| bad("--timeout", &v, "a duration such as 90s, 5m, 1h"))?;
                a.timeout = (!d.is_zero()).then_some(d);
            }
            Long("request-timeout") => {
                let v = string(parser)?;
                let d = parse_duration(&v).filter(|d| !d.is_zero());
                a.request_timeout = Some(d.ok_or_else(|| bad("--request-timeout", &v, "a duration above 0"))?);
            }
            Long("retry-all") => a.retry_all = true,
            Long("ca-file") => a.ca_file = Some(parser.value()?.into()),
            Long("allow-insecure-http") => a.allow_insecure_http = true,
            Long("output-file") => a.output_file = Some(parser.value()?.into()),
            Short('q') | Long("quiet") => a.quiet = true,
            Short('h') | Long("help") => return Ok(Command::Help),
            Value(v) => {
                return Err(format!(
                    "unexpected argument {:?}: a command to run goes after `--`",
                    v.to_string_lossy()
                )
                .into())
            }
            other => return Err(other.unexpected()),
        }
    }
    a.auth = auth.or_else(|| env("CODER_AGENT_AUTH")).unwrap_or_default();
    a.agent_url = agent_url.or_else(|| env("CODER_AGENT_URL")).unwrap_or_default();
    a.agent_name = agent_name.or_else(|| env("CODER_AGENT_NAME"));
    if a.auth.is_empty() {
        return Err("no credential source: give --auth or set CODER_AGENT_AUTH".into());
    }
    Ok(Command::Token(Box::new(a)))
}

fn string(parser: &mut lexopt::Parser) -> Result<String, lexopt::Error> {
    parser.value()?.string()
}

fn bad(flag: &str, value: &str, expected: &str) -> lexopt::Error {
    format!("{flag} {value:?}: expected {expected}").into()
}

/// `90`, `90s`, `1500ms`, `5m`, `2h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() || number.len() > 9 {
        return None;
    }
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(args: &[&str], env: &[(&str, &str)]) -> Result<Command, String> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        parse(args.iter().map(OsString::from), &lookup)
    }

    fn token(args: &[&str], env: &[(&str, &str)]) -> TokenArgs {
        match parse_with(args, env) {
            Ok(Command::Token(a)) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_and_environment() {
        let env = [
            ("CODER_AGENT_AUTH", "aws-instance-identity"),
            ("CODER_AGENT_URL", "https://e"),
            ("CODER_AGENT_NAME", "main"),
        ];
        let a = token(&["token"], &env);
        assert_eq!(
            (a.auth.as_str(), a.agent_url.as_str()),
            ("aws-instance-identity", "https://e")
        );
        assert_eq!(a.agent_name.as_deref(), Some("main"));
        assert_eq!(a.timeout, None);
        let a = token(
            &[
                "token",
                "--auth",
                "kubernetes",
                "--agent-name=dev",
                "--timeout",
                "5m",
                "--mount",
                "k8s",
            ],
            &env,
        );
        assert_eq!((a.auth.as_str(), a.agent_name.as_deref()), ("kubernetes", Some("dev")));
        assert_eq!(a.timeout, Some(Duration::from_secs(300)));
        assert_eq!(a.mount.as_deref(), Some("k8s"));
        let a = token(
            &["token", "--timeout", "0", "--retry-all", "-q", "--aws-pkcs7", "rsa2048"],
            &env,
        );
        assert_eq!(
            (a.timeout, a.retry_all, a.quiet, a.aws_pkcs7),
            (None, true, true, Some(Pkcs7::Rsa2048))
        );
    }

    #[test]
    fn command_after_double_dash() {
        let env = [("CODER_AGENT_AUTH", "jwt-file")];
        let a = token(&["token", "--mount", "m", "--", "coder", "agent", "--x"], &env);
        assert_eq!(a.command, vec![OsString::from("coder"), "agent".into(), "--x".into()]);
        assert!(parse_with(&["token", "coder", "agent"], &env).is_err());
    }

    #[test]
    fn usage_errors() {
        assert!(parse_with(&[], &[]).is_err());
        assert!(parse_with(&["fetch"], &[]).is_err());
        assert!(parse_with(&["token"], &[]).unwrap_err().contains("CODER_AGENT_AUTH"));
        let env = [("CODER_AGENT_AUTH", "kubernetes")];
        for bad in [
            &["token", "--timeout", "soon"][..],
            &["token", "--aws-pkcs7", "dsa"],
            &["token", "--bogus"],
            &["token", "--auth"],
            &["token", "--request-timeout", "0"],
        ] {
            assert!(parse_with(bad, &env).is_err(), "{bad:?}");
        }
        assert_eq!(parse_with(&["--help"], &[]), Ok(Command::Help));
        assert_eq!(parse_with(&["token", "-h"], &[]), Ok(Command::Help));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        for bad in ["", "s", "-1", "1.5s", "1d", "99999999999s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
