//! Reading server logs: tails for failure reports, and the scan for unexpected errors that
//! multi-process tests fail on.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::{DevError, NodeRef};
use crate::limits::{DEV_LOG_ERROR_LINES_MAX, DEV_LOG_TAIL_BYTES_MAX};

/// One line of a node's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub node: NodeRef,
    /// 1-based line number in the log file.
    pub line_no: usize,
    pub text: String,
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.node, self.line_no, self.text)
    }
}

/// The last `n` lines of the file at `path` (looking at most at its last
/// [`DEV_LOG_TAIL_BYTES_MAX`] bytes). A missing file has no lines.
pub fn tail_lines(path: &Path, n: usize) -> Result<Vec<String>, DevError> {
    let context = || format!("read {}", path.display());
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DevError::io(context(), e)),
    };
    let len = file.metadata().map_err(|e| DevError::io(context(), e))?.len();
    let start = len.saturating_sub(DEV_LOG_TAIL_BYTES_MAX);
    file.seek(SeekFrom::Start(start)).map_err(|e| DevError::io(context(), e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| DevError::io(context(), e))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // Probably cut in the middle.
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..].iter().map(|l| strip_ansi(l)).collect())
}

/// Lines of `node`'s log at `path` that report an error — tracing's ` ERROR ` level or a Rust
/// panic (`panicked at`) — and contain none of the `allowed` substrings. At most
/// [`DEV_LOG_ERROR_LINES_MAX`] lines are returned. A missing file has no lines.
pub fn scan_log_errors(node: NodeRef, path: &Path, allowed: &[&str]) -> Result<Vec<LogLine>, DevError> {
    Ok(scan_errors_in(path, allowed)?.into_iter().map(|(line_no, text)| LogLine { node, line_no, text }).collect())
}

/// [`scan_log_errors`] for any log file: `(1-based line number, text)` of each error line.
pub(crate) fn scan_errors_in(path: &Path, allowed: &[&str]) -> Result<Vec<(usize, String)>, DevError> {
    let context = || format!("read {}", path.display());
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DevError::io(context(), e)),
    };
    let mut found = Vec::new();
    let mut reader = BufReader::new(file);
    let mut raw = Vec::new();
    let mut line_no = 0;
    loop {
        raw.clear();
        let n = reader.read_until(b'\n', &mut raw).map_err(|e| DevError::io(context(), e))?;
        if n == 0 || found.len() >= DEV_LOG_ERROR_LINES_MAX {
            break;
        }
        line_no += 1;
        let text = strip_ansi(String::from_utf8_lossy(&raw).trim_end());
        if is_error_line(&text) && !allowed.iter().any(|a| text.contains(a)) {
            found.push((line_no, text));
        }
    }
    Ok(found)
}

fn is_error_line(text: &str) -> bool {
    text.contains(" ERROR ") || text.starts_with("ERROR ") || text.contains("panicked at")
}

/// Removes ANSI escape sequences (colours), in case a server ignores `NO_COLOR`.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters and intermediates, then one final byte in '@'..='~'.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::NodeId;

    #[test]
    fn scan_finds_errors_and_panics_but_honours_the_allow_list() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("c.log");
        std::fs::write(
            &path,
            "2026-01-01T00:00:00Z  INFO cairn: started\n\
             2026-01-01T00:00:01Z ERROR cairn::raft: disk on fire\n\
             2026-01-01T00:00:02Z \u{1b}[31mERROR\u{1b}[0m cairn::net: peer 3 unreachable\n\
             2026-01-01T00:00:03Z  WARN cairn: an ERROR-ish word inside a warning\n\
             thread 'main' panicked at src/main.rs:1:1:\n",
        )
        .expect("write");
        let node = NodeRef::coordinator(NodeId(1));
        let found = scan_log_errors(node, &path, &[]).expect("scan");
        assert_eq!(found.iter().map(|l| l.line_no).collect::<Vec<_>>(), [2, 3, 5]);
        assert_eq!(found[1].text, "2026-01-01T00:00:02Z ERROR cairn::net: peer 3 unreachable");
        let found = scan_log_errors(node, &path, &["unreachable"]).expect("scan");
        assert_eq!(found.iter().map(|l| l.line_no).collect::<Vec<_>>(), [2, 5]);
        assert!(scan_log_errors(node, &tmp.path().join("missing"), &[]).expect("scan").is_empty());
    }

    #[test]
    fn tail_returns_the_last_lines() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("c.log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).expect("write");
        assert_eq!(tail_lines(&path, 2).expect("tail"), ["line 99", "line 100"]);
        assert!(tail_lines(&tmp.path().join("missing"), 2).expect("tail").is_empty());
    }
}
