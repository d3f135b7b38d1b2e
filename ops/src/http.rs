//! A minimal HTTP/1.1 endpoint for monitoring (`/metrics`, `/healthz`,
//! `/readyz`): GET only, one request per connection, the request head
//! limited to 8 KiB and 5 s. Monitoring needs no more, and this keeps hyper
//! and its dependency tree out of the build. Must run inside a tokio
//! `LocalSet` (connections are `spawn_local`ed).

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head read, bytes.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What a handler answers.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Serves `listener` forever; `handler` gets the request path (query
/// stripped) of each GET.
pub async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(String) -> Fut + Clone + 'static,
    Fut: Future<Output = Response> + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let handler = handler.clone();
                tokio::task::spawn_local(async move {
                    let _ = connection(stream, handler).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection<F, Fut>(mut stream: TcpStream, handler: F) -> std::io::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Response>,
{
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => {
            return respond(&mut stream, Response::text(431, "request too large\n")).await
        }
        _ => return Ok(()),
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let response = if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        Response::text(400, "bad request\n")
    } else if method != "GET" {
        Response::text(405, "only GET\n")
    } else {
        let path = target.split('?').next().unwrap_or("").to_string();
        handler(path).await
    };
    respond(&mut stream, response).await
}

/// Reads until the blank line ending the head; `None` if it exceeds
/// [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

async fn respond(stream: &mut TcpStream, r: Response) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(r.body.as_bytes()).await?;
    stream.shutdown().await
}

/// The content type of Prometheus' OpenMetrics text exposition.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `request` raw and returns the status code answered.
    async fn status_of(addr: std::net::SocketAddr, request: &[u8]) -> u16 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        // Read to EOF; a reset after the answer (the server closes with
        // unread input on a 431) ends the read too.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        text.split(' ').nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn bad_requests_get_typed_answers() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::task::spawn_local(serve(listener, |path: String| async move {
                match path.as_str() {
                    "/x" => Response::text(200, "x"),
                    _ => Response::text(404, "no"),
                }
            }));
            assert_eq!(status_of(addr, b"GET /x?a=1 HTTP/1.1\r\n\r\n").await, 200);
            assert_eq!(status_of(addr, b"GET /y HTTP/1.0\r\n\r\n").await, 404);
            assert_eq!(status_of(addr, b"POST /x HTTP/1.1\r\n\r\n").await, 405);
            assert_eq!(status_of(addr, b"hello\r\n\r\n").await, 400);
            assert_eq!(status_of(addr, b"\xff\xfe\r\n\r\n").await, 400);
            let mut big = b"GET /x HTTP/1.1\r\n".to_vec();
            big.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
            assert_eq!(status_of(addr, &big).await, 431);
        });
    }
}
