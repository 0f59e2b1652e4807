//! Accepts any `:authority` on the local socket. grpc-core clients (Python grpcio, C++, Ruby)
//! dialing `unix:PATH` send the socket path, percent-encoded, as the HTTP/2 authority (e.g.
//! `run%2Flatchkey%2Flatchkeyd.sock`), which the HTTP/2 server refuses as malformed before
//! any gRPC code runs (RST_STREAM PROTOCOL_ERROR on every call). On a Unix socket the
//! authority means nothing, so the client-to-server byte stream is rewritten: every header
//! block is decoded (HPACK, one decoder per connection, as the client's encoder expects),
//! an authority that is not a valid one becomes `localhost`, and the block is encoded again
//! for the server (one encoder per connection, as the server's decoder expects). Every other
//! frame passes through unchanged; nothing is rewritten server-to-client.

use std::io;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's initial value).
const MAX_FRAME: usize = 16_384;
/// A header block larger than this is refused (the server's own limit is far below).
const MAX_BLOCK: usize = 1 << 20;

/// The rewriting state of one connection.
pub(super) struct Rewriter {
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    preface_seen: bool,
    passthrough: bool,
    pending: Option<(u32, u8, Vec<u8>)>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter").finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        Self {
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            preface_seen: false,
            passthrough: false,
            pending: None,
            decoder: loona_hpack::Decoder::new(),
            encoder: loona_hpack::Encoder::new(),
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

impl Rewriter {
    /// Bytes ready for the server.
    pub(super) fn ready(&self) -> &[u8] {
        &self.output[self.sent..]
    }

    /// The server took `n` of the ready bytes.
    pub(super) fn consume(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
        }
    }

    /// Takes bytes the client sent; whole frames become ready, rewritten where needed.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.passthrough {
            self.output.extend_from_slice(bytes);
            return Ok(());
        }
        self.input.extend_from_slice(bytes);
        if !self.preface_seen {
            if self.input.len() < PREFACE.len() {
                if !PREFACE.starts_with(&self.input) {
                    self.pass_through_from_here();
                }
                return Ok(());
            }
            if !self.input.starts_with(PREFACE) {
                self.pass_through_from_here();
                return Ok(());
            }
            self.output.extend_from_slice(PREFACE);
            self.input.drain(..PREFACE.len());
            self.preface_seen = true;
        }
        let mut at = 0;
        while self.input.len() - at >= FRAME_HEADER {
            let head = &self.input[at..at + FRAME_HEADER];
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            if self.input.len() - at < FRAME_HEADER + len {
                break;
            }
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let frame = self.input[at..at + FRAME_HEADER + len].to_vec();
            at += FRAME_HEADER + len;
            let payload = &frame[FRAME_HEADER..];
            match kind {
                HEADERS => {
                    let fragment = header_fragment(flags, payload)?;
                    if flags & END_HEADERS != 0 {
                        self.rewrite_block(stream, flags & END_STREAM, &fragment)?;
                    } else {
                        self.pending = Some((stream, flags & END_STREAM, fragment.to_vec()));
                    }
                }
                CONTINUATION => {
                    let Some((first, end_stream, mut block)) = self.pending.take() else {
                        return Err(invalid("CONTINUATION without HEADERS"));
                    };
                    if first != stream || block.len() + payload.len() > MAX_BLOCK {
                        return Err(invalid("bad CONTINUATION"));
                    }
                    block.extend_from_slice(payload);
                    if flags & END_HEADERS != 0 {
                        self.rewrite_block(stream, end_stream, &block)?;
                    } else {
                        self.pending = Some((first, end_stream, block));
                    }
                }
                _ if self.pending.is_some() => {
                    return Err(invalid("a frame interleaved a header block"));
                }
                _ => self.output.extend_from_slice(&frame),
            }
        }
        self.input.drain(..at);
        Ok(())
    }

    /// Not HTTP/2 with prior knowledge: hand everything over untouched (the server answers).
    fn pass_through_from_here(&mut self) {
        self.passthrough = true;
        self.output.append(&mut self.input);
    }

    fn rewrite_block(&mut self, stream: u32, end_stream: u8, block: &[u8]) -> io::Result<()> {
        let decoder = &mut self.decoder;
        let decoded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decoder.decode(block)))
                .map_err(|_| invalid("undecodable header block"))?
                .map_err(|e| invalid(&format!("header block: {e:?}")))?;
        let headers: Vec<(Vec<u8>, Vec<u8>)> = decoded
            .into_iter()
            .map(|(name, value)| {
                if name == b":authority"
                    && tonic::codegen::http::uri::Authority::try_from(value.as_slice()).is_err()
                {
                    (name, b"localhost".to_vec())
                } else {
                    (name, value)
                }
            })
            .collect();
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut first = true;
        if encoded.is_empty() {
            self.push_frame(HEADERS, end_stream | END_HEADERS, stream, &[]);
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let kind = if first { HEADERS } else { CONTINUATION };
            let mut flags = if last { END_HEADERS } else { 0 };
            if first {
                flags |= end_stream;
            }
            self.push_frame(kind, flags, stream, chunk);
            first = false;
        }
        Ok(())
    }

    fn push_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len();
        self.output.extend_from_slice(&[
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
        ]);
        self.output.extend_from_slice(&stream.to_be_bytes());
        self.output.extend_from_slice(payload);
    }
}

/// The header block fragment of a HEADERS frame's payload (padding and priority removed).
fn header_fragment(flags: u8, payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut body = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&len, rest) = body
            .split_first()
            .ok_or_else(|| invalid("padded HEADERS"))?;
        pad = usize::from(len);
        body = rest;
    }
    if flags & PRIORITY != 0 {
        body = body.get(5..).ok_or_else(|| invalid("HEADERS priority"))?;
    }
    let end = body
        .len()
        .checked_sub(pad)
        .ok_or_else(|| invalid("HEADERS padding"))?;
    Ok(body[..end].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut r = Rewriter::default();
        r.push_frame(kind, flags, stream, payload);
        r.output
    }

    #[test]
    fn a_path_authority_becomes_localhost_and_everything_else_passes() {
        let mut client = loona_hpack::Encoder::new();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":path", b"/latchkey.v1.SystemService/Status"),
            (b":authority", b"run%2Flatchkey%2Flatchkeyd.sock"),
            (b"content-type", b"application/grpc"),
        ];
        let block = client.encode(headers.clone());
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        stream.extend(frame(HEADERS, 0, 1, &block[..5]));
        stream.extend(frame(CONTINUATION, END_HEADERS, 1, &block[5..]));
        stream.extend(frame(0x0, END_STREAM, 1, b"data"));
        let mut r = Rewriter::default();
        // Byte by byte: frames are only rewritten whole.
        for byte in &stream {
            r.feed(std::slice::from_ref(byte)).unwrap();
        }
        let out = r.ready().to_vec();
        assert!(out.starts_with(PREFACE));
        let mut server = loona_hpack::Decoder::new();
        let mut at = PREFACE.len() + FRAME_HEADER; // past SETTINGS
        let len = usize::from(out[at + 2]);
        assert_eq!(out[at + 3], HEADERS);
        assert_eq!(out[at + 4] & END_HEADERS, END_HEADERS);
        let decoded = server
            .decode(&out[at + FRAME_HEADER..at + FRAME_HEADER + len])
            .unwrap();
        assert!(decoded.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
        assert!(decoded.contains(&(b":method".to_vec(), b"POST".to_vec())));
        at += FRAME_HEADER + len;
        assert_eq!(&out[at..], frame(0x0, END_STREAM, 1, b"data").as_slice());
    }

    #[test]
    fn fuzz_client_byte_streams_never_panic_the_rewriter() {
        let mut client = loona_hpack::Encoder::new();
        let block = client.encode(vec![
            (&b":authority"[..], &b"tmp%2Fsock"[..]),
            (&b":path"[..], &b"/x"[..]),
        ]);
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &{
            let mut p = vec![2];
            p.extend_from_slice(&block);
            p.extend_from_slice(&[0, 0]);
            p
        }));
        stream.extend(frame(0x0, END_STREAM, 1, b"data"));
        crate::base::fuzzing::run("authority-rewriter", &[stream], |input| {
            let mut r = Rewriter::default();
            for chunk in input.chunks(7) {
                if r.feed(chunk).is_err() {
                    break;
                }
            }
        });
    }

    #[test]
    fn a_valid_authority_is_kept_and_a_non_http2_stream_passes_untouched() {
        let mut client = loona_hpack::Encoder::new();
        let block = client.encode(vec![(&b":authority"[..], &b"localhost:1"[..])]);
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let mut r = Rewriter::default();
        r.feed(&stream).unwrap();
        let out = r.ready().to_vec();
        let decoded = loona_hpack::Decoder::new()
            .decode(&out[PREFACE.len() + FRAME_HEADER..])
            .unwrap();
        assert_eq!(
            decoded,
            vec![(b":authority".to_vec(), b"localhost:1".to_vec())]
        );
        let mut r = Rewriter::default();
        r.feed(b"GET / HTTP/1.1\r\n").unwrap();
        assert_eq!(r.ready(), b"GET / HTTP/1.1\r\n");
    }
}
