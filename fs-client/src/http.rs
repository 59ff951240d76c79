//! A deliberately tiny HTTP/1.1 client for the servers' plain-HTTP ports (`/health`, `/status`,
//! `/metrics`).
//!
//! Contract: one `GET` per TCP connection (`Connection: close`), the whole exchange bounded by
//! one deadline and the response bounded by [`HTTP_RESPONSE_BYTES_MAX`]. It understands
//! `Content-Length`, `Transfer-Encoding: chunked` and read-to-EOF bodies. It never follows
//! redirects, never speaks TLS and never retries: callers that poll (readiness) own the retry
//! loop. This keeps a full HTTP stack (reqwest, hyper client) out of the CLI for three URLs.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::HTTP_RESPONSE_BYTES_MAX;

/// Why an HTTP request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("GET http://{addr}{path}: timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, path: String, timeout: Duration },
    #[error("GET http://{addr}{path}: {source}")]
    Io {
        addr: SocketAddr,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("GET http://{addr}{path}: response larger than {limit} bytes")]
    TooLarge { addr: SocketAddr, path: String, limit: usize },
    #[error("GET http://{addr}{path}: malformed response: {reason}")]
    Malformed { addr: SocketAddr, path: String, reason: String },
}

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as UTF-8 text, with invalid sequences replaced.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET http://{addr}{path}` with one overall deadline.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpResponse, HttpError> {
    match tokio::time::timeout(timeout, get_inner(addr, path)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(HttpError::Timeout { addr, path: path.to_owned(), timeout }),
    }
}

async fn get_inner(addr: SocketAddr, path: &str) -> Result<HttpResponse, HttpError> {
    let io_err = |source| HttpError::Io { addr, path: path.to_owned(), source };
    let mut stream = TcpStream::connect(addr).await.map_err(io_err)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io_err)?;

    // Read to EOF (the server closes because of `Connection: close`), never past the limit.
    let mut raw = Vec::new();
    let mut limited = (&mut stream).take(HTTP_RESPONSE_BYTES_MAX as u64 + 1);
    limited.read_to_end(&mut raw).await.map_err(io_err)?;
    if raw.len() > HTTP_RESPONSE_BYTES_MAX {
        return Err(HttpError::TooLarge { addr, path: path.to_owned(), limit: HTTP_RESPONSE_BYTES_MAX });
    }
    parse_response(&raw).map_err(|reason| HttpError::Malformed { addr, path: path.to_owned(), reason })
}

/// Parses an HTTP/1.x status line such as `HTTP/1.1 200 OK` into (status code, reason phrase).
pub fn parse_status_line(line: &str) -> Result<(u16, &str), String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x status line: {line:?}"));
    }
    let code = parts.next().ok_or_else(|| format!("status line without a status code: {line:?}"))?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad status code {code:?} in {line:?}"));
    }
    let status: u16 = code.parse().map_err(|e| format!("bad status code {code:?}: {e}"))?;
    Ok((status, parts.next().unwrap_or_default()))
}

/// Parses a complete response (status line, headers, body) as read up to EOF.
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let header_end = find(raw, b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..header_end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let (status, _reason) = parse_status_line(lines.next().unwrap_or_default())?;

    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value.parse().map_err(|_| format!("bad Content-Length {value:?}"))?;
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }

    let rest = &raw[header_end + 4..];
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = content_length {
        rest.get(..len).ok_or_else(|| format!("body shorter than Content-Length {len}"))?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse { status, body })
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or("chunk size line without CRLF")?;
        let size_line = std::str::from_utf8(&data[..line_end]).map_err(|_| "chunk size is not UTF-8")?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = data.get(..size).ok_or("truncated chunk")?;
        body.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("chunk without trailing CRLF")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_parses_code_and_reason() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Ok((200, "OK")));
        assert_eq!(parse_status_line("HTTP/1.0 503 Service Unavailable\r\n"), Ok((503, "Service Unavailable")));
        assert_eq!(parse_status_line("HTTP/1.1 204"), Ok((204, "")));
    }

    #[test]
    fn status_line_rejects_garbage() {
        assert!(parse_status_line("").is_err());
        assert!(parse_status_line("HTTP/2 200 OK").is_err());
        assert!(parse_status_line("HTTP/1.1 20 OK").is_err());
        assert!(parse_status_line("HTTP/1.1 abc OK").is_err());
        assert!(parse_status_line("SSH-2.0-OpenSSH").is_err());
    }

    #[test]
    fn response_with_content_length() {
        let raw =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n{\"health\":\"true\"}";
        let response = parse_response(raw).expect("parse");
        assert_eq!(response.status, 200);
        assert_eq!(response.body_text(), r#"{"health":"true"}"#);
    }

    #[test]
    fn response_chunked() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n";
        let response = parse_response(raw).expect("parse");
        assert_eq!(response.body_text(), "Wikipedia");
    }

    #[test]
    fn response_until_eof_and_errors() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\n\r\nnot yet";
        let response = parse_response(raw).expect("parse");
        assert_eq!((response.status, response.body_text().as_str()), (503, "not yet"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").is_err());
    }

    #[tokio::test]
    async fn get_against_a_local_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 1024];
            let n = socket.read(&mut buf).await.expect("read");
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.expect("write");
            request
        });
        let response = get(addr, "/health", Duration::from_secs(5)).await.expect("get");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"ok");
        let request = server.await.expect("join");
        assert!(request.starts_with("GET /health HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("Connection: close\r\n"), "{request}");
    }
}
