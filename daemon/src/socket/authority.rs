//! Makes kqd answer gRPC clients that send the socket path as the HTTP/2 `:authority`.
//!
//! gRPC C++ (so pyarrow.flight and the C++ ADBC driver) and grpc-java name a Unix socket
//! target by its path, percent-encoded or not, in `:authority`. hyper's HTTP/2 stack (h2)
//! rejects such a header block as malformed and resets the stream, and it has no option to
//! relax that (hyperium/h2#487 is unmerged). So the bytes a client sends pass through this
//! rewriter before h2 reads them.
//!
//! The first header block of a connection decides. When its authority is a valid one, as
//! every Rust and Go client sends, the connection is passed through untouched from then on.
//! Otherwise every header block of the connection is decoded and encoded again with
//! `:authority: localhost`. Re-encoding all of them, not only the bad ones, keeps h2's HPACK
//! dynamic table in step with the one encoder it then sees (ours) rather than the client's.

use loona_hpack::{Decoder, Encoder};

/// The client's connection preface, which comes before any frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// h2's default SETTINGS_MAX_FRAME_SIZE, which tonic keeps: frames we write stay below it.
const MAX_FRAME: usize = 16_384;
/// What a header block may grow to before the connection is refused. h2 allows 16 KiB of
/// decoded headers by default; a client sending far more than that is not one of ours.
const MAX_BLOCK: usize = 1 << 20;
/// The authority put in place of a socket path.
const LOCALHOST: &[u8] = b"localhost";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No header block seen yet.
    Undecided,
    /// The client sends valid authorities: bytes go through as they are.
    Passthrough,
    /// Every header block is decoded and encoded again.
    Transcode,
}

/// A header block being gathered from a HEADERS frame and its CONTINUATION frames.
struct Block {
    stream: u32,
    /// The HEADERS frame's flags, less PADDED and END_HEADERS.
    flags: u8,
    priority: Option<[u8; 5]>,
    fragments: Vec<u8>,
    /// The frames as they came, for a connection that turns out to need no rewriting.
    original: Vec<u8>,
}

/// Rewrites the client-to-server half of one HTTP/2 connection. Feed it what the client
/// sent; it returns what h2 should read.
pub struct AuthorityFix {
    mode: Mode,
    preface_left: usize,
    /// Received bytes not yet rewritten: at most one frame header or one header frame.
    pending: Vec<u8>,
    /// Payload bytes of a non-header frame still to pass through unread.
    skip: usize,
    block: Option<Block>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
}

impl Default for AuthorityFix {
    fn default() -> Self {
        AuthorityFix {
            mode: Mode::Undecided,
            preface_left: PREFACE.len(),
            pending: Vec::new(),
            skip: 0,
            block: None,
            decoder: Decoder::new(),
            encoder: Encoder::new(),
        }
    }
}

impl AuthorityFix {
    /// Whether the connection has been found to need nothing: the caller may then read
    /// straight from the socket.
    pub fn is_passthrough(&self) -> bool {
        self.mode == Mode::Passthrough && self.pending.is_empty()
    }

    /// Takes bytes the client sent and appends to `out` what h2 should read. Bytes that
    /// end in the middle of a frame header or a header frame are kept for the next call.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        if self.mode == Mode::Passthrough {
            out.append(&mut self.pending);
            out.extend_from_slice(input);
            return Ok(());
        }
        if self.preface_left > 0 {
            let n = self.preface_left.min(input.len());
            out.extend_from_slice(&input[..n]);
            self.preface_left -= n;
            input = &input[n..];
        }
        loop {
            if self.mode == Mode::Passthrough {
                out.append(&mut self.pending);
                out.extend_from_slice(input);
                return Ok(());
            }
            if self.skip > 0 {
                if input.is_empty() {
                    return Ok(());
                }
                let n = self.skip.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.skip -= n;
                input = &input[n..];
                continue;
            }
            if self.pending.len() < FRAME_HEADER {
                let n = (FRAME_HEADER - self.pending.len()).min(input.len());
                self.pending.extend_from_slice(&input[..n]);
                input = &input[n..];
                if self.pending.len() < FRAME_HEADER {
                    return Ok(());
                }
            }
            let (len, kind) = (frame_len(&self.pending), self.pending[3]);
            if kind != HEADERS && kind != CONTINUATION {
                // Any other frame goes through as it comes, without being buffered.
                out.append(&mut self.pending);
                self.skip = len;
                continue;
            }
            if len > MAX_BLOCK {
                return Err(invalid("a header frame larger than 1 MiB"));
            }
            let n = (FRAME_HEADER + len - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..n]);
            input = &input[n..];
            if self.pending.len() < FRAME_HEADER + len {
                return Ok(());
            }
            let frame = std::mem::take(&mut self.pending);
            self.header_frame(frame, out)?;
        }
    }

    /// Takes one whole HEADERS or CONTINUATION frame.
    fn header_frame(&mut self, frame: Vec<u8>, out: &mut Vec<u8>) -> std::io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let mut payload = &frame[FRAME_HEADER..];
        if kind == HEADERS {
            if self.block.is_some() {
                return Err(invalid("a HEADERS frame inside another header block"));
            }
            if flags & PADDED != 0 {
                let (&pad, rest) = payload
                    .split_first()
                    .ok_or_else(|| invalid("a padded HEADERS frame with no payload"))?;
                payload = rest
                    .get(..rest.len().saturating_sub(pad as usize))
                    .filter(|_| (pad as usize) <= rest.len())
                    .ok_or_else(|| invalid("HEADERS padding longer than the frame"))?;
            }
            let priority = if flags & PRIORITY != 0 {
                let p: [u8; 5] = payload
                    .get(..5)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| invalid("a HEADERS frame too short for its priority"))?;
                payload = &payload[5..];
                Some(p)
            } else {
                None
            };
            self.block = Some(Block {
                stream,
                flags: flags & !(PADDED | END_HEADERS),
                priority,
                fragments: Vec::new(),
                original: Vec::new(),
            });
        }
        let block = self
            .block
            .as_mut()
            .filter(|b| b.stream == stream)
            .ok_or_else(|| invalid("a CONTINUATION frame outside its header block"))?;
        block.fragments.extend_from_slice(payload);
        if block.fragments.len() > MAX_BLOCK {
            return Err(invalid("a header block larger than 1 MiB"));
        }
        if self.mode == Mode::Undecided {
            block.original.extend_from_slice(&frame);
        }
        if flags & END_HEADERS == 0 {
            return Ok(());
        }
        let block = self.block.take().expect("checked above");
        let headers = self
            .decoder
            .decode(&block.fragments)
            .map_err(|e| invalid(&format!("a header block HPACK cannot decode: {e:?}")))?;
        if self.mode == Mode::Undecided {
            let bad = headers
                .iter()
                .any(|(n, v)| n == b":authority" && !valid_authority(v));
            if !bad {
                // h2 decodes the same bytes our decoder did, so its table matches the
                // client's from here on, as if we had never looked.
                out.extend_from_slice(&block.original);
                self.mode = Mode::Passthrough;
                return Ok(());
            }
            tracing::debug!("a client sent a socket path as :authority; rewriting its headers");
            self.mode = Mode::Transcode;
        }
        let encoded = self.encoder.encode(headers.iter().map(|(n, v)| {
            let v: &[u8] = if n == b":authority" && !valid_authority(v) {
                LOCALHOST
            } else {
                v
            };
            (n.as_slice(), v)
        }));
        write_block(&block, &encoded, out);
        Ok(())
    }
}

/// Writes a header block as one HEADERS frame and as many CONTINUATION frames as it needs.
fn write_block(block: &Block, encoded: &[u8], out: &mut Vec<u8>) {
    let mut first = Vec::with_capacity(5 + encoded.len().min(MAX_FRAME));
    if let Some(p) = block.priority {
        first.extend_from_slice(&p);
    }
    let room = MAX_FRAME - first.len();
    let (head, mut rest) = encoded.split_at(encoded.len().min(room));
    first.extend_from_slice(head);
    let end = if rest.is_empty() { END_HEADERS } else { 0 };
    write_frame(out, HEADERS, block.flags | end, block.stream, &first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = tail;
        let end = if rest.is_empty() { END_HEADERS } else { 0 };
        write_frame(out, CONTINUATION, end, block.stream, chunk);
    }
}

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fn frame_len(header: &[u8]) -> usize {
    u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize
}

/// Whether h2 accepts this authority.
fn valid_authority(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("http/2 from the client: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_frame(enc: &mut Encoder<'_>, stream: u32, authority: &[u8]) -> Vec<u8> {
        let block = enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (
                b":path",
                b"/arrow.flight.protocol.FlightService/GetFlightInfo",
            ),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
        ]);
        let mut out = Vec::new();
        write_frame(&mut out, HEADERS, END_HEADERS, stream, &block);
        out
    }

    fn data_frame(stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, 0x0, 0x1, stream, payload);
        out
    }

    /// Feeds `input` a few bytes at a time, as a socket may deliver it.
    fn feed_in_pieces(fix: &mut AuthorityFix, input: &[u8], piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            fix.feed(chunk, &mut out).unwrap();
        }
        out
    }

    /// Decodes what h2 would read back into (stream, headers) per header block, and data.
    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    fn read_back(bytes: &[u8]) -> (Vec<(u32, Headers)>, Vec<Vec<u8>>) {
        assert!(bytes.starts_with(PREFACE));
        let mut rest = &bytes[PREFACE.len()..];
        let mut dec = Decoder::new();
        let (mut blocks, mut data) = (Vec::new(), Vec::new());
        let mut block = Vec::new();
        while !rest.is_empty() {
            let len = frame_len(rest);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
            match kind {
                HEADERS | CONTINUATION => {
                    let skip = if kind == HEADERS && flags & PRIORITY != 0 {
                        5
                    } else {
                        0
                    };
                    block.extend_from_slice(&payload[skip..]);
                    if flags & END_HEADERS != 0 {
                        blocks.push((stream, dec.decode(&block).unwrap()));
                        block.clear();
                    }
                }
                _ => data.push(payload.to_vec()),
            }
            rest = &rest[FRAME_HEADER + len..];
        }
        (blocks, data)
    }

    fn authority(headers: &[(Vec<u8>, Vec<u8>)]) -> &[u8] {
        &headers.iter().find(|(n, _)| n == b":authority").unwrap().1
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_on_every_request() {
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(&mut enc, 1, b"%2Ftmp%2Fkq%2Fkq.sock"));
        input.extend(data_frame(1, b"request one"));
        input.extend(headers_frame(&mut enc, 3, b"%2Ftmp%2Fkq%2Fkq.sock"));
        input.extend(data_frame(3, b"request two"));
        for piece in [1, 7, 4096] {
            let mut fix = AuthorityFix::default();
            let out = feed_in_pieces(&mut fix, &input, piece);
            let (blocks, data) = read_back(&out);
            assert_eq!(blocks.len(), 2, "piece {piece}");
            for (stream, headers) in &blocks {
                assert_eq!(authority(headers), b"localhost", "stream {stream}");
                assert!(
                    headers
                        .iter()
                        .any(|(n, v)| n == b":path" && v.ends_with(b"GetFlightInfo"))
                );
            }
            assert_eq!(data, vec![b"request one".to_vec(), b"request two".to_vec()]);
            assert!(!fix.is_passthrough());
        }
    }

    #[test]
    fn a_valid_authority_passes_through_byte_for_byte() {
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(&mut enc, 1, b"kqd.local"));
        input.extend(data_frame(1, b"payload"));
        input.extend(headers_frame(&mut enc, 3, b"kqd.local"));
        let mut fix = AuthorityFix::default();
        let out = feed_in_pieces(&mut fix, &input, 5);
        assert_eq!(out, input);
        assert!(fix.is_passthrough());
    }

    #[test]
    fn padding_priority_and_continuation_frames_are_understood() {
        let mut enc = Encoder::new();
        let big = vec![b'x'; 20_000];
        let block = enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"/run/user/1000/kq/kq.sock"),
            (b"x-big", &big),
        ]);
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        let (first, second) = block.split_at(100);
        payload.extend_from_slice(first);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        write_frame(&mut input, HEADERS, PADDED | PRIORITY, 1, &payload);
        write_frame(&mut input, CONTINUATION, END_HEADERS, 1, second);
        let mut fix = AuthorityFix::default();
        let out = feed_in_pieces(&mut fix, &input, 1000);
        let (blocks, _) = read_back(&out);
        assert_eq!(blocks.len(), 1);
        assert_eq!(authority(&blocks[0].1), b"localhost");
        assert!(blocks[0].1.iter().any(|(n, v)| n == b"x-big" && v == &big));
        // The first frame keeps its priority (and PRIORITY flag) and loses its padding.
        let first = &out[PREFACE.len()..];
        assert_eq!(first[4] & (PRIORITY | PADDED), PRIORITY);
        assert_eq!(&first[FRAME_HEADER..FRAME_HEADER + 5], &[0, 0, 0, 0, 16]);
    }

    #[test]
    fn a_continuation_without_headers_is_refused() {
        let mut input = PREFACE.to_vec();
        write_frame(&mut input, CONTINUATION, END_HEADERS, 1, b"\x82");
        let mut fix = AuthorityFix::default();
        assert!(fix.feed(&input, &mut Vec::new()).is_err());
    }
}
