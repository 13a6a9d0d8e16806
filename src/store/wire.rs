//! A plain-TCP Redis connection for replays, the live reader and publishes, whose replies are
//! decoded in place: the redis crate parses every reply into a `Value` tree (a `Vec` per bulk
//! string) with a general combinator parser, and in a reconnect storm that was 40% of the
//! server's CPU. Here a reply is first scanned for completeness as it arrives (nothing
//! allocated), then read once, borrowing the buffer: a stream range entry by entry through
//! [`Replies`], so a stream entry costs its `Entry` and nothing more, short replies as [`Reply`]
//! trees.
//!
//! Only what those need: RESP2 (no `HELLO`), `AUTH` and `SELECT` as the URL says. A
//! `rediss://` or unix-socket Redis keeps the redis crate's connections ([`Wire::connect`] says
//! `None`).

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Nesting a reply may have: stream ranges inside `EXEC` inside nothing else are 4 deep.
const MAX_DEPTH: usize = 8;
/// The largest length a reply may declare (Redis's own `proto-max-bulk-len` ceiling): beyond,
/// the bytes are not a reply. A whole reply is as large as what was asked (`COUNT`), no larger.
const MAX_LENGTH: usize = 512 << 20;
/// What one read asks of the socket at least.
const READ_CHUNK: usize = 64 * 1024;
/// A kept buffer larger than this is let go after the exchange that grew it.
const KEPT_BUFFER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("redis connection failed")]
    Io(#[from] std::io::Error),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis closed the connection")]
    Closed,
    #[error("redis answered an error: {0}")]
    Server(String),
    #[error("unreadable reply from redis: {0}")]
    Protocol(&'static str),
}

impl WireError {
    /// An error reply, as text.
    pub fn server(message: &[u8]) -> Self {
        Self::Server(String::from_utf8_lossy(message).into_owned())
    }

    /// Redis no longer holds the script (it restarted, or failed over): load it and ask again.
    pub fn is_noscript(&self) -> bool {
        matches!(self, Self::Server(message) if message.starts_with("NOSCRIPT"))
    }

    /// Whether a request may have been carried out although this came back: it was sent and no
    /// readable answer arrived. A refused connection or an error reply carried out nothing.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Self::Io(error) => error.kind() != std::io::ErrorKind::ConnectionRefused,
            // Sent, and what came back was not a reply: it may have run all the same.
            Self::Timeout(_) | Self::Closed | Self::Protocol(_) => true,
            Self::Server(_) => false,
        }
    }

    /// The connection is unusable, not the request: a fresh connection may succeed.
    pub fn connection_lost(&self) -> bool {
        matches!(self, Self::Io(_) | Self::Closed)
    }
}

/// One reply, borrowing the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    Status(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    Bulk(&'a [u8]),
    Nil,
    Array(Vec<Reply<'a>>),
}

impl<'a> Reply<'a> {
    /// The reply as a bulk or status string.
    pub fn bytes(&self) -> Result<&'a [u8], WireError> {
        match self {
            Self::Bulk(bytes) | Self::Status(bytes) => Ok(bytes),
            Self::Error(message) => Err(WireError::server(message)),
            _ => Err(WireError::Protocol("expected a string")),
        }
    }

    /// The reply as an array (nil: empty).
    pub fn into_array(self) -> Result<Vec<Reply<'a>>, WireError> {
        match self {
            Self::Array(items) => Ok(items),
            Self::Nil => Ok(Vec::new()),
            Self::Error(message) => Err(WireError::server(message)),
            _ => Err(WireError::Protocol("expected an array")),
        }
    }
}

/// Appends one command (an array of bulk strings) to `out`.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    command_of(out, args.len());
    for arg in args {
        argument(out, arg);
    }
}

/// Appends the head of a command of `count` arguments, each then appended by [`argument`]: for
/// a command whose arguments are not at hand as one slice.
pub fn command_of(out: &mut Vec<u8>, count: usize) {
    out.push(b'*');
    push_number(out, count);
}

/// Appends one argument of the command [`command_of`] began.
pub fn argument(out: &mut Vec<u8>, arg: &[u8]) {
    out.push(b'$');
    push_number(out, arg.len());
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

fn push_number(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub struct Wire {
    socket: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    /// Connects as `info` says (address, credentials, database), each address given
    /// `connect_timeout` and the greeting (`AUTH`, `SELECT` or a `PING`) `response_timeout`;
    /// `None` when `info` asks for what this connection does not do (TLS, a unix socket).
    pub async fn connect(
        info: &redis::ConnectionInfo,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Option<Self>, WireError> {
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Ok(None);
        };
        let socket = connect_any(host, *port, connect_timeout).await?;
        socket.set_nodelay(true)?;
        let mut wire = Self {
            socket,
            buf: Vec::new(),
        };
        let settings = info.redis_settings();
        let mut setup = Vec::new();
        let mut replies = 0;
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => command(&mut setup, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => command(&mut setup, &[b"AUTH", password.as_bytes()]),
            }
            replies += 1;
        }
        if settings.db() != 0 {
            command(
                &mut setup,
                &[b"SELECT", settings.db().to_string().as_bytes()],
            );
            replies += 1;
        }
        if replies == 0 {
            // A server that refuses the connection says so first (max clients, protected mode):
            // heard here, not taken for the first reply.
            command(&mut setup, &[b"PING"]);
            replies = 1;
        }
        wire.exchange(&setup, replies, response_timeout, |replies| {
            replies.iter().try_for_each(|reply| reply.bytes().map(drop))
        })
        .await?;
        Ok(Some(wire))
    }

    /// Whether a kept connection still looks usable: Redis has not closed it (a restart, its
    /// `timeout`, `CLIENT KILL`) nor sent anything unasked. Reads nothing from a healthy
    /// connection, and makes no system call while tokio knows it has nothing to read.
    pub fn is_open(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.socket.try_read(&mut byte), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Sends `request` (commands encoded by [`command`]), waits for its `replies` replies and
    /// hands them to `decode` as trees. After an error the connection is not to be used again: a
    /// reply may be left half read.
    pub async fn exchange<T, E: From<WireError>>(
        &mut self,
        request: &[u8],
        replies: usize,
        timeout: Duration,
        decode: impl FnOnce(Vec<Reply<'_>>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.exchange_streamed(request, replies, timeout, |mut read| {
            decode(read.take(replies)?)
        })
        .await
    }

    /// [`Wire::exchange`], the replies handed over as a cursor: a stream range is read entry by
    /// entry, with no tree (an allocation per array) in between.
    pub async fn exchange_streamed<T, E: From<WireError>>(
        &mut self,
        request: &[u8],
        replies: usize,
        timeout: Duration,
        decode: impl FnOnce(Replies<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.buf.clear();
        let socket = &mut self.socket;
        let buf = &mut self.buf;
        tokio::time::timeout(timeout, async {
            socket.write_all(request).await?;
            let mut scan = Scan::new(replies);
            while !scan.advance(buf)? {
                buf.reserve(READ_CHUNK.max(buf.len()));
                if socket.read_buf(buf).await? == 0 {
                    return Err(WireError::Closed);
                }
            }
            Ok::<_, WireError>(())
        })
        .await
        .map_err(|_| WireError::Timeout(timeout))??;
        let decoded = decode(Replies {
            buf: &self.buf,
            at: 0,
        });
        if self.buf.capacity() > KEPT_BUFFER {
            self.buf = Vec::new();
        }
        decoded
    }
}

/// The replies of one exchange, read in order from the buffer (scanned whole first, so every
/// element the replies hold is complete): element by element, or as trees.
pub struct Replies<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Replies<'a> {
    /// The next element, whole.
    pub fn next(&mut self) -> Result<Reply<'a>, WireError> {
        parse(self.buf, &mut self.at, 0)
    }

    /// The next `n` elements, whole.
    pub fn take(&mut self, n: usize) -> Result<Vec<Reply<'a>>, WireError> {
        (0..n).map(|_| self.next()).collect()
    }

    /// The next element as an array's head: its length (nil: none), its elements next.
    pub fn array(&mut self) -> Result<Option<usize>, WireError> {
        let Header { kind, text, end } =
            header(self.buf, self.at)?.ok_or(WireError::Protocol("reply cut short"))?;
        self.at = end;
        match kind {
            b'*' => length(text),
            b'$' if text == b"-1" => Ok(None),
            b'-' => Err(WireError::server(text)),
            _ => Err(WireError::Protocol("expected an array")),
        }
    }

    /// The most elements that can follow (each takes 3 bytes at least): a bound for a capacity
    /// taken from a count the reply declares.
    pub fn room(&self) -> usize {
        (self.buf.len() - self.at) / 3
    }

    /// The next element as a stream entry, `[id, [field, value, ...]]`: its id, and its fields
    /// in `fields` (cleared first) up to the first that is not a pair of strings. The entry is
    /// read whole either way, so the next element is the one after it.
    pub fn entry(&mut self, fields: &mut Vec<(&'a [u8], &'a [u8])>) -> Result<&'a [u8], WireError> {
        if self.array()? != Some(2) {
            return Err(WireError::Protocol("stream entry is not a pair"));
        }
        let id = self.string()?;
        fields.clear();
        let n = self.array()?.unwrap_or(0);
        let mut strings = true;
        for _ in 0..n / 2 {
            match (self.string(), self.string()) {
                (Ok(name), Ok(value)) if strings => fields.push((name, value)),
                _ => strings = false,
            }
        }
        if n % 2 == 1 {
            self.next()?;
        }
        Ok(id)
    }

    /// The next element as a string (bulk or status); an error reply is the server's error, and
    /// anything else is read past and refused.
    pub fn string(&mut self) -> Result<&'a [u8], WireError> {
        if let Some(bytes) = self.bulk() {
            return Ok(bytes);
        }
        self.next()?.bytes()
    }

    /// The next element if it is a bulk string [`bulk_at`] reads; else `None`, having read
    /// nothing.
    fn bulk(&mut self) -> Option<&'a [u8]> {
        let (start, end) = bulk_at(self.buf, self.at)?;
        self.at = end + 2;
        Some(&self.buf[start..end])
    }
}

/// Connects to the first of `host`'s addresses that answers, each given `timeout`: one that
/// silently drops packets (an unreachable IPv6 route, say) does not use up the others' time.
async fn connect_any(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, WireError> {
    let addrs = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| WireError::Timeout(timeout))??;
    let mut last = WireError::Io(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{host} resolves to no address"),
    ));
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(socket)) => return Ok(socket),
            Ok(Err(error)) => last = error.into(),
            Err(_) => last = WireError::Timeout(timeout),
        }
    }
    Err(last)
}

/// How far the replies in a growing buffer are known complete: each read scans only what it
/// added, allocating nothing (the open arrays' remaining counts aside).
struct Scan {
    /// Where the next unscanned element starts.
    at: usize,
    /// Elements still to come: the replies, then each open array's.
    left: Vec<usize>,
}

impl Scan {
    fn new(replies: usize) -> Self {
        Self {
            at: 0,
            left: vec![replies],
        }
    }

    /// Scans what `buf` holds beyond the last call; whether every reply is complete.
    fn advance(&mut self, buf: &[u8]) -> Result<bool, WireError> {
        loop {
            while self.left.last() == Some(&0) {
                self.left.pop();
            }
            let Some(left) = self.left.last_mut() else {
                return Ok(true);
            };
            if let Some((_, end)) = bulk_at(buf, self.at) {
                *left -= 1;
                self.at = end + 2;
                continue;
            }
            let Some(Header {
                kind,
                text,
                end: after,
            }) = header(buf, self.at)?
            else {
                return Ok(false);
            };
            let end = match kind {
                b'$' => match length(text)? {
                    None => after,
                    Some(len) if buf.len() >= after + len + 2 => after + len + 2,
                    Some(_) => return Ok(false),
                },
                _ => after,
            };
            *left -= 1;
            self.at = end;
            if kind == b'*'
                && let Some(n) = length(text)?
            {
                if self.left.len() > MAX_DEPTH {
                    return Err(WireError::Protocol("reply nested too deep"));
                }
                self.left.push(n);
            }
        }
    }
}

/// The bytes (start, end) of the bulk string at `at` when it has a length of up to 8 digits and
/// is whole in `buf`, read in one pass: most elements of a stream range are such strings.
/// `None` for anything else, which the general path (`header`) then reads or refuses.
#[inline]
fn bulk_at(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    let (b'$', rest) = buf.get(at..)?.split_first()? else {
        return None;
    };
    let mut len = 0;
    let mut digits = 0;
    while let Some(&digit @ b'0'..=b'9') = rest.get(digits) {
        len = len * 10 + usize::from(digit - b'0');
        digits += 1;
        if digits > 8 {
            return None;
        }
    }
    if digits == 0 || rest.get(digits..digits + 2)? != b"\r\n" {
        return None;
    }
    let start = at + 1 + digits + 2;
    (buf.get(start + len..start + len + 2)? == b"\r\n").then_some((start, start + len))
}

/// An element's first line: its type byte, the line's text and where the line ends.
struct Header<'a> {
    kind: u8,
    text: &'a [u8],
    end: usize,
}

/// The header of the element at `at`; `None` while the line is incomplete.
fn header(buf: &[u8], at: usize) -> Result<Option<Header<'_>>, WireError> {
    let Some(rest) = buf.get(at..).filter(|rest| !rest.is_empty()) else {
        return Ok(None);
    };
    // Header lines are short (a length, an integer, a status): a plain loop beats memchr's setup.
    let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
        return Ok(None);
    };
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => match rest[0] {
            kind @ (b'+' | b'-' | b':' | b'$' | b'*') => Ok(Some(Header {
                kind,
                text: &rest[1..cr],
                end: at + cr + 2,
            })),
            _ => Err(WireError::Protocol("unknown reply type")),
        },
        Some(_) => Err(WireError::Protocol("CR without LF")),
    }
}

/// A bulk string's or array's length; `None` for -1 (nil).
fn length(text: &[u8]) -> Result<Option<usize>, WireError> {
    match integer(text)? {
        -1 => Ok(None),
        n => usize::try_from(n)
            .ok()
            .filter(|&n| n <= MAX_LENGTH)
            .map(Some)
            .ok_or(WireError::Protocol("length out of range")),
    }
}

/// A reply's decimal integer: an optional `-`, then digits only (each bulk string's length is
/// one, so this runs for every field of every replayed entry).
fn integer(text: &[u8]) -> Result<i64, WireError> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    let value = match crate::model::parse_decimal(digits) {
        Some(m) if negative => 0i64.checked_sub_unsigned(m),
        Some(m) => i64::try_from(m).ok(),
        None => None,
    };
    value.ok_or(WireError::Protocol("not an integer"))
}

/// Reads the element at `*at` (complete: scanned first) and moves past it.
fn parse<'a>(buf: &'a [u8], at: &mut usize, depth: usize) -> Result<Reply<'a>, WireError> {
    if depth > MAX_DEPTH {
        return Err(WireError::Protocol("reply nested too deep"));
    }
    let Header {
        kind,
        text,
        end: after,
    } = header(buf, *at)?.ok_or(WireError::Protocol("reply cut short"))?;
    *at = after;
    Ok(match kind {
        b'+' => Reply::Status(text),
        b'-' => Reply::Error(text),
        b':' => Reply::Int(integer(text)?),
        b'$' => match length(text)? {
            None => Reply::Nil,
            Some(len) => {
                let bytes = buf
                    .get(after..after + len)
                    .filter(|_| buf.get(after + len..after + len + 2) == Some(b"\r\n"))
                    .ok_or(WireError::Protocol("bulk string cut short"))?;
                *at = after + len + 2;
                Reply::Bulk(bytes)
            }
        },
        _ => match length(text)? {
            None => Reply::Nil,
            Some(n) => {
                // Each element takes 3 bytes at least: a count beyond that is not to be trusted.
                let mut items = Vec::with_capacity(n.min((buf.len() - after) / 3));
                for _ in 0..n {
                    items.push(parse(buf, at, depth + 1)?);
                }
                Reply::Array(items)
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `wire` fed in pieces of every size: complete only at the end, the same replies.
    fn parse_all(wire: &[u8], replies: usize) -> Vec<Reply<'_>> {
        for piece in 1..=wire.len() {
            let mut scan = Scan::new(replies);
            let mut end = 0;
            let mut complete = false;
            while end < wire.len() {
                end = (end + piece).min(wire.len());
                complete = scan.advance(&wire[..end]).expect("valid");
                assert!(
                    !complete || end == wire.len(),
                    "complete early at {end} (piece {piece})"
                );
            }
            assert!(complete, "piece {piece}");
        }
        let mut at = 0;
        let parsed = (0..replies)
            .map(|_| parse(wire, &mut at, 0).expect("valid"))
            .collect();
        assert_eq!(at, wire.len());
        parsed
    }

    #[test]
    fn replies_are_complete_only_when_whole_at_any_split() {
        let wire = b"+OK\r\n+QUEUED\r\n*2\r\n*3\r\n:5\r\n$-1\r\n$3\r\na\r\n\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nc\r\n$0\r\n\r\n";
        let replies = parse_all(wire, 3);
        assert_eq!(replies[0], Reply::Status(b"OK"));
        assert_eq!(replies[1], Reply::Status(b"QUEUED"));
        assert_eq!(
            replies[2],
            Reply::Array(vec![
                Reply::Array(vec![Reply::Int(5), Reply::Nil, Reply::Bulk(b"a\r\n")]),
                Reply::Array(vec![Reply::Array(vec![
                    Reply::Bulk(b"1-0"),
                    Reply::Array(vec![Reply::Bulk(b"c"), Reply::Bulk(b"")]),
                ])]),
            ])
        );
    }

    #[test]
    fn integers_are_what_str_parse_reads_without_a_plus_sign() {
        for text in [
            "0",
            "-0",
            "7",
            "-1",
            "0042",
            "9223372036854775807",
            "-9223372036854775808",
        ] {
            assert_eq!(
                integer(text.as_bytes()).ok(),
                text.parse::<i64>().ok(),
                "{text}"
            );
        }
        for text in [
            "",
            "-",
            "+1",
            "1a",
            " 1",
            "9223372036854775808",
            "-9223372036854775809",
        ] {
            assert!(integer(text.as_bytes()).is_err(), "{text:?}");
        }
    }

    #[test]
    fn empty_and_nil_arrays_and_errors_parse() {
        let replies = parse_all(b"*0\r\n*-1\r\n-NOSCRIPT No matching script\r\n", 3);
        assert_eq!(replies[0], Reply::Array(vec![]));
        assert_eq!(replies[1], Reply::Nil);
        let error = replies[2].bytes().expect_err("an error reply");
        assert!(error.is_noscript(), "{error}");
    }

    /// Reads `wire` (scanned whole first) with a cursor.
    fn cursor(wire: &[u8], replies: usize) -> Replies<'_> {
        assert!(Scan::new(replies).advance(wire).expect("valid"));
        Replies { buf: wire, at: 0 }
    }

    #[test]
    fn stream_entries_read_in_place_field_by_field() {
        // A range of three entries: plain; with a nil field value (the rest is not kept, the
        // entry is still read past); with an odd field count and a length of 9 digits' room.
        let long = "x".repeat(12);
        let wire = format!(
            "*3\r\n*2\r\n$3\r\n1-1\r\n*4\r\n$1\r\np\r\n$0\r\n\r\n$1\r\nc\r\n$2\r\n{{}}\r\n\
             *2\r\n+2-1\r\n*4\r\n$1\r\nt\r\n$-1\r\n$1\r\nc\r\n$1\r\n1\r\n\
             *2\r\n$3\r\n3-1\r\n*3\r\n$1\r\nc\r\n$000000012\r\n{long}\r\n:7\r\n\
             +OK\r\n"
        );
        let mut replies = cursor(wire.as_bytes(), 2);
        let mut fields = Vec::new();
        assert_eq!(replies.array().expect("array"), Some(3));
        assert_eq!(replies.entry(&mut fields).expect("entry"), b"1-1");
        assert_eq!(fields, [(&b"p"[..], &b""[..]), (b"c", b"{}")]);
        assert_eq!(replies.entry(&mut fields).expect("entry"), b"2-1");
        assert!(fields.is_empty(), "{fields:?}");
        assert_eq!(replies.entry(&mut fields).expect("entry"), b"3-1");
        assert_eq!(fields, [(&b"c"[..], long.as_bytes())]);
        assert_eq!(
            replies.next().expect("the next reply"),
            Reply::Status(b"OK")
        );
    }

    #[test]
    fn a_cursor_refuses_what_is_not_there() {
        let mut replies = cursor(b"*-1\r\n$-1\r\n-ERR no\r\n:1\r\n*1\r\n:2\r\n", 5);
        assert_eq!(replies.array().expect("nil array"), None);
        assert_eq!(replies.array().expect("nil bulk"), None);
        let error = replies.array().expect_err("an error reply");
        assert!(
            matches!(error, WireError::Server(ref m) if m == "ERR no"),
            "{error}"
        );
        assert!(replies.array().is_err(), "an integer is no array");
        let mut fields = Vec::new();
        assert!(replies.entry(&mut fields).is_err(), "an entry is a pair");
        assert!(
            Replies {
                buf: b"$2\r\nab",
                at: 0
            }
            .string()
            .is_err(),
            "cut short"
        );
        assert!(
            Replies {
                buf: b"$1\r\nab\r\n",
                at: 0
            }
            .string()
            .is_err(),
            "CRLF misplaced"
        );
    }

    #[test]
    fn malformed_replies_are_refused_not_waited_for() {
        for wire in [
            &b"?what\r\n"[..],
            b"$abc\r\n",
            b"$-2\r\n",
            b"+OK\rX",
            b"*99999999999999999999\r\n",
        ] {
            assert!(Scan::new(1).advance(wire).is_err(), "{wire:?}");
        }
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 2);
        assert!(Scan::new(1).advance(&deep).is_err(), "too deep");
        // A bulk string whose CRLF is not where its length says.
        let mut at = 0;
        assert!(parse(b"$1\r\nab\r\n", &mut at, 0).is_err());
    }

    #[test]
    fn only_a_request_sent_and_unanswered_has_an_unknown_outcome() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!WireError::from(refused).outcome_unknown());
        assert!(WireError::from(reset).outcome_unknown());
        assert!(WireError::Timeout(Duration::from_secs(1)).outcome_unknown());
        assert!(WireError::Closed.outcome_unknown());
        assert!(!WireError::server(b"NOSCRIPT No matching script").outcome_unknown());
        assert!(WireError::Protocol("unknown reply type").outcome_unknown());
    }

    #[tokio::test]
    async fn a_server_that_refuses_at_once_fails_the_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let _ = socket
                .write_all(b"-ERR max number of clients reached\r\n")
                .await;
        });
        let info =
            redis::IntoConnectionInfo::into_connection_info(format!("redis://127.0.0.1:{port}"))
                .unwrap();
        let second = Duration::from_secs(1);
        let refused = Wire::connect(&info, second, second).await;
        assert!(
            matches!(&refused, Err(WireError::Server(message)) if message.contains("max number")),
            "{:?}",
            refused.map(|wire| wire.is_some())
        );
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"XRANGE", b"k", b"(1-0", b"+"]);
        assert_eq!(
            out,
            b"*4\r\n$6\r\nXRANGE\r\n$1\r\nk\r\n$4\r\n(1-0\r\n$1\r\n+\r\n"
        );
    }
}
