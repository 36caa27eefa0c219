//! The `/metrics` endpoint: a small HTTP/1 server (one request per connection, a few
//! connections at a time) that encodes the registry in the Prometheus text format.
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Scrapes served at once; more connections wait in the listen backlog.
const CONCURRENT: usize = 4;
/// A request head larger than this is refused.
const MAX_HEAD: usize = 8192;
/// A client gets this long to send its request and read the answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `registry` on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::debug!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(TIMEOUT, handle(stream, &registry)).await.is_err() {
                log::debug!("metrics: a scrape timed out");
            }
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, registry: &Registry) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let (status, body, content_type) = loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => break respond(req.method, req.path, registry),
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => {}
            _ => break ("400 Bad Request", "bad request\n".to_owned(), "text/plain"),
        }
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn respond(method: Option<&str>, path: Option<&str>, registry: &Registry) -> (&'static str, String, &'static str) {
    let path = path.unwrap_or("/").split('?').next().unwrap_or("/");
    match (method, path) {
        (Some("GET" | "HEAD"), "/metrics") => {
            let mut body = String::with_capacity(64 * 1024);
            match prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
                Ok(()) => ("200 OK", body, prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
                Err(_) => ("500 Internal Server Error", "encoding failed\n".to_owned(), "text/plain"),
            }
        }
        (Some("GET" | "HEAD"), "/") => ("200 OK", "ghostwire: metrics at /metrics\n".to_owned(), "text/plain"),
        (Some("GET" | "HEAD"), _) => ("404 Not Found", "not found: try /metrics\n".to_owned(), "text/plain"),
        _ => ("405 Method Not Allowed", "use GET\n".to_owned(), "text/plain"),
    }
}
