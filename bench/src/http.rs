//! Just enough HTTP/1.1 for a load generator: one GET held open as an SSE stream (chunked or
//! not), and keep-alive POSTs. Raw sockets keep the generator's own cost per stream small.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::sse::{Event, Parser};

fn request(method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: bench\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Reads until the end of the response head; returns (status, chunked, content-length, leftover).
async fn read_head(
    socket: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> anyhow::Result<(u16, bool, Option<usize>, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let rest = buf[end + 4..].to_vec();
            buf.clear();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("no status code")?;
            let chunked = head.contains("transfer-encoding: chunked");
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok());
            return Ok((status, chunked, length, rest));
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A response body held open and parsed as SSE.
pub struct EventStream {
    socket: TcpStream,
    dechunk: Option<Dechunker>,
    /// Bytes read and not parsed yet (the head's leftover, then each read).
    pending: Vec<u8>,
    /// The dechunked body of the last read.
    body: Vec<u8>,
    pub parser: Parser,
}

/// Bytes one read of an event stream asks for.
const READ_BUFFER: usize = 16 * 1024;

impl EventStream {
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        headers: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let mut socket = TcpStream::connect(addr).await?;
        socket
            .write_all(&request("GET", path, headers, b""))
            .await?;
        let (status, chunked, _, rest) = read_head(&mut socket, &mut Vec::new()).await?;
        if status != 200 {
            bail!("subscribe answered {status}");
        }
        Ok(Self {
            socket,
            dechunk: chunked.then(Dechunker::default),
            pending: rest,
            body: Vec::new(),
            parser: Parser::default(),
        })
    }

    /// The events completed by the next bytes; `None` once the server closed the stream.
    pub async fn next_events(&mut self) -> anyhow::Result<Option<Vec<Event>>> {
        if self.pending.is_empty() {
            // The buffer is the stream's own, kept: no allocation (or zeroing) per read.
            self.pending.reserve(READ_BUFFER);
            let n = self.socket.read_buf(&mut self.pending).await?;
            if n == 0 {
                return Ok(None);
            }
        }
        let events = match &mut self.dechunk {
            // The last chunk ends the response even though the connection stays open.
            Some(dechunk) if dechunk.finished => return Ok(None),
            Some(dechunk) => {
                dechunk.feed(&self.pending, &mut self.body);
                let events = self.parser.feed(&self.body);
                self.body.clear();
                events
            }
            None => self.parser.feed(&self.pending),
        };
        self.pending.clear();
        if events.is_empty() && self.dechunk.as_ref().is_some_and(|d| d.finished) {
            return Ok(None);
        }
        Ok(Some(events))
    }
}

/// Decodes `Transfer-Encoding: chunked` incrementally.
#[derive(Default)]
struct Dechunker {
    size_line: Vec<u8>,
    remaining: usize,
    /// Bytes of the CRLF after a chunk's data still to skip.
    trailer: usize,
    /// The zero-length last chunk was seen: the response is over.
    finished: bool,
}

impl Dechunker {
    /// Appends the chunk data in `bytes` to `out`.
    fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        while !bytes.is_empty() {
            if self.trailer > 0 {
                let skip = self.trailer.min(bytes.len());
                self.trailer -= skip;
                bytes = &bytes[skip..];
            } else if self.remaining > 0 {
                let take = self.remaining.min(bytes.len());
                out.extend_from_slice(&bytes[..take]);
                self.remaining -= take;
                bytes = &bytes[take..];
                if self.remaining == 0 {
                    self.trailer = 2;
                }
            } else {
                let Some(at) = bytes.iter().position(|&b| b == b'\n') else {
                    self.size_line.extend_from_slice(bytes);
                    break;
                };
                self.size_line.extend_from_slice(&bytes[..at]);
                bytes = &bytes[at + 1..];
                let line = String::from_utf8_lossy(&self.size_line).trim().to_owned();
                self.size_line.clear();
                let hex = line.split(';').next().unwrap_or_default();
                self.remaining = usize::from_str_radix(hex, 16).unwrap_or(0);
                if self.remaining == 0 && !hex.is_empty() {
                    self.finished = true;
                    break;
                }
            }
        }
    }
}

/// A keep-alive connection for publishing.
pub struct Publisher {
    addr: SocketAddr,
    socket: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Publisher {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            socket: None,
            buf: Vec::new(),
        }
    }

    /// POSTs and returns the status, reconnecting once if the kept-alive socket was closed.
    pub async fn post(
        &mut self,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> anyhow::Result<u16> {
        Ok(self.post_for_body(path, headers, body).await?.0)
    }

    /// POSTs and returns the status and the (non-chunked) response body.
    pub async fn post_for_body(
        &mut self,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let request = request("POST", path, headers, body);
        for attempt in 0..2 {
            let socket = match &mut self.socket {
                Some(socket) => socket,
                None => self.socket.insert(TcpStream::connect(self.addr).await?),
            };
            match Self::exchange(socket, &request, &mut self.buf).await {
                Ok(answer) => return Ok(answer),
                // The server closed the kept-alive socket: once more on a new one.
                Err(_) if attempt == 0 => self.socket = None,
                Err(error) => return Err(error),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// GETs `path` on a fresh connection and returns the body as text.
    pub async fn get_text(&mut self, path: &str) -> anyhow::Result<String> {
        let mut socket = TcpStream::connect(self.addr).await?;
        let headers = [("connection".to_owned(), "close".to_owned())];
        socket
            .write_all(&request("GET", path, &headers, b""))
            .await?;
        let mut response = Vec::new();
        socket.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        Ok(text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default())
    }

    async fn exchange(
        socket: &mut TcpStream,
        request: &[u8],
        buf: &mut Vec<u8>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        socket.write_all(request).await?;
        let (status, chunked, length, mut rest) = read_head(socket, buf).await?;
        if chunked {
            while !rest.ends_with(b"0\r\n\r\n") {
                let mut chunk = [0u8; 4096];
                let n = socket.read(&mut chunk).await?;
                if n == 0 {
                    bail!("closed inside a chunked body");
                }
                rest.extend_from_slice(&chunk[..n]);
            }
        } else {
            let length = length.unwrap_or(0);
            while rest.len() < length {
                let mut chunk = [0u8; 4096];
                let n = socket.read(&mut chunk).await?;
                if n == 0 {
                    bail!("closed inside the body");
                }
                rest.extend_from_slice(&chunk[..n]);
            }
        }
        Ok((status, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_across_arbitrary_splits() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for piece in 1..wire.len() {
            let mut dechunker = Dechunker::default();
            let mut out = Vec::new();
            for chunk in wire.chunks(piece) {
                dechunker.feed(chunk, &mut out);
            }
            assert_eq!(out, b"hello, world", "piece {piece}");
            assert!(
                dechunker.finished,
                "the last chunk ends the body (piece {piece})"
            );
        }
    }
}
