//! Async frame I/O over any futures `AsyncRead`/`AsyncWrite` stream.

use crate::frame::{check_header_len, decode_header, encode_header, FrameError, Header};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer closed the stream cleanly between two frames.
    #[error("connection closed")]
    Closed,
    /// The stream failed (or ended inside a frame).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent a frame that does not decode; the framing is lost.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
}

/// Reads one frame header. `Err(Closed)` on a clean end of stream between
/// frames; the payload (`payload_length` bytes) is left for the caller.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, WireError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return Err(if got == 0 {
                WireError::Closed
            } else {
                WireError::Io(std::io::ErrorKind::UnexpectedEof.into())
            });
        }
        got += n;
    }
    let len = u32::from_le_bytes(len) as usize;
    check_header_len(len)?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(decode_header(&buf)?)
}

/// Reads and drops `n` payload bytes (of a request that is refused).
pub async fn skip<R: AsyncRead + Unpin>(r: &mut R, mut n: u64) -> Result<(), WireError> {
    let mut buf = vec![0u8; n.min(64 * 1024) as usize];
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..k]).await?;
        n -= k as u64;
    }
    Ok(())
}

/// Writes a frame: header (with `payload_length` set to `payload.len()`) and payload.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    h: &Header,
    payload: &[u8],
) -> Result<(), WireError> {
    debug_assert_eq!(h.payload_length as usize, payload.len());
    let mut head = encode_header(h);
    if payload.len() <= 16 * 1024 {
        // One send for small frames.
        head.extend_from_slice(payload);
        w.write_all(&head).await?;
    } else {
        w.write_all(&head).await?;
        w.write_all(payload).await?;
    }
    Ok(())
}
