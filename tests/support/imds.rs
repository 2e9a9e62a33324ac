//! IMDSv2 on loopback, as EC2 answers when IMDSv2 is required: a session
//! token from `PUT /latest/api/token`, and any `GET` without it is 401. It
//! serves one instance identity document and its signature. Standard library
//! only: the benchmarks include this file as it is.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

/// Serves `document` and `signature` on a loopback port until the process
/// ends; returns its base URL (`http://127.0.0.1:PORT`).
pub fn serve(document: String, signature: String) -> std::io::Result<String> {
    const SESSION: &str = "imds-stand-in-session";
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let (mut line, mut token, mut length) = (String::new(), None, 0);
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap_or((&header, ""));
                match name.trim().to_ascii_lowercase().as_str() {
                    "x-aws-ec2-metadata-token" => token = Some(value.trim().to_string()),
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
            let _ = reader.take(length).read_to_end(&mut Vec::new());
            let mut words = line.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let (status, answer) = match (method, path) {
                ("PUT", "/latest/api/token") => (200, SESSION),
                _ if token.as_deref() != Some(SESSION) => (401, ""),
                ("GET", "/latest/dynamic/instance-identity/document") => (200, document.as_str()),
                ("GET", "/latest/dynamic/instance-identity/signature") => (200, signature.as_str()),
                _ => (404, ""),
            };
            let _ = write!(
                &stream,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    Ok(url)
}
