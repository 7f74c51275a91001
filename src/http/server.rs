//! A small HTTP/1.1 server on std's sockets: one accepting thread and a few workers, one
//! request per connection, strict limits. Enough for scrapers and people; nothing from a
//! request ever reaches the filesystem (see `routes`).

use super::routes::{reason_phrase, respond, Context, Response};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default address: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:6060";

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line plus headers, bytes.
    pub max_header_bytes: usize,
    /// Longest body accepted (and discarded), bytes.
    pub max_body_bytes: usize,
    /// Time allowed to read a whole request.
    pub read_timeout: Duration,
    /// Time allowed to write a response.
    pub write_timeout: Duration,
    /// Requests handled at once.
    pub workers: usize,
    /// Connections waiting for a worker; more are answered 503.
    pub queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 8 * 1024,
            max_body_bytes: 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            workers: 4,
            queue: 16,
        }
    }
}

/// Configures the listener; `HEAPWATCH_ADDR` and `HEAPWATCH_TOKEN` override it at start.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    addr: String,
    token: Option<String>,
    dump_dir: Option<std::path::PathBuf>,
    limits: Limits,
}

/// The running listener; dropping it stops it.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    /// A builder: loopback port 6060, no token, the running watch's dump directory.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            addr: DEFAULT_ADDR.to_owned(),
            token: None,
            dump_dir: None,
            limits: Limits::default(),
        }
    }

    /// The address it listens on (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl ServerBuilder {
    /// Where to listen (`HEAPWATCH_ADDR`), e.g. `127.0.0.1:6060` or `0.0.0.0:6060`.
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }
    /// Require `Authorization: Bearer <token>` (`HEAPWATCH_TOKEN`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
    /// The dump directory to list. By default, the running watch's directory, looked up at each
    /// request (so a listener started before the watch lists its dumps); without a watch,
    /// `HEAPWATCH_DIR` or `./heapwatch-dumps`.
    pub fn dump_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.dump_dir = Some(dir.into());
        self
    }
    /// Request limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Binds and starts serving.
    ///
    /// # Errors
    /// When the address does not resolve or cannot be bound.
    pub fn start(self) -> io::Result<Server> {
        let addr = std::env::var("HEAPWATCH_ADDR")
            .ok()
            .filter(|a| !a.trim().is_empty())
            .unwrap_or(self.addr);
        let token = std::env::var("HEAPWATCH_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or(self.token);
        let addr = addr.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing")
        })?;
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let context = Arc::new(Context {
            token,
            dump_dir: self.dump_dir,
            metrics: super::render_metrics,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let limits = self.limits;
        let (sender, receiver) = mpsc::sync_channel::<TcpStream>(limits.queue.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..limits.workers.max(1) {
            let receiver = Arc::clone(&receiver);
            let context = Arc::clone(&context);
            std::thread::Builder::new()
                .name(format!("heapwatch-http-{i}"))
                .spawn(move || worker(&receiver, &context, limits))?;
        }
        let acceptor_stop = Arc::clone(&stop);
        let acceptor = std::thread::Builder::new()
            .name("heapwatch-http".to_owned())
            .spawn(move || accept(listener, sender, &acceptor_stop, limits))?;
        tracing::info!(addr = %local_addr, auth = context.token.is_some(), "heapwatch: serving /metrics and /debug/pprof/heap");
        Ok(Server {
            local_addr,
            stop,
            acceptor: Some(acceptor),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: TcpListener, sender: SyncSender<TcpStream>, stop: &AtomicBool, limits: Limits) {
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let Ok(stream) = stream else { continue };
        match sender.try_send(stream) {
            Ok(()) => {}
            Err(TrySendError::Full(mut stream)) => {
                let _ = stream.set_write_timeout(Some(limits.write_timeout));
                let _ = write_response(&mut stream, &plain(503), false);
            }
            Err(TrySendError::Disconnected(_)) => break,
        }
    }
    // Dropping the sender ends the workers once the queue is drained.
}

fn worker(receiver: &Mutex<Receiver<TcpStream>>, context: &Context, limits: Limits) {
    loop {
        let next = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(mut stream) = next else { return };
        // A panic in a page must not take the worker down with it.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serve(&mut stream, context, limits)
        }));
    }
}

fn plain(status: u16) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        disposition: None,
        body: format!("{}\n", reason_phrase(status)).into_bytes(),
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    target: String,
    authorization: Option<String>,
    content_length: usize,
}

fn serve(stream: &mut TcpStream, context: &Context, limits: Limits) {
    let _ = stream.set_read_timeout(Some(limits.read_timeout));
    let _ = stream.set_write_timeout(Some(limits.write_timeout));
    let deadline = Instant::now() + limits.read_timeout;
    // One buffered reader for the head and the body, bounded to what may legally arrive.
    let allowed = (limits.max_header_bytes + limits.max_body_bytes + 1) as u64;
    let mut reader = BufReader::new((&*stream).take(allowed));
    let response = match read_head(&mut reader, limits, deadline) {
        Ok(head) if head.content_length > limits.max_body_bytes => plain(413),
        Ok(head) => {
            let mut body = vec![0u8; head.content_length];
            if reader.read_exact(&mut body).is_err() {
                plain(400)
            } else {
                let head_only = head.method == "HEAD";
                let response = respond(
                    context,
                    &head.method,
                    &head.target,
                    head.authorization.as_deref(),
                );
                let _ = write_response(stream, &response, head_only);
                return;
            }
        }
        Err(status) => plain(status),
    };
    let _ = write_response(stream, &response, false);
}

/// Reads the request line and headers; an HTTP status on failure.
fn read_head(reader: &mut impl BufRead, limits: Limits, deadline: Instant) -> Result<Head, u16> {
    let mut head = Vec::with_capacity(1024);
    loop {
        if Instant::now() > deadline {
            return Err(408);
        }
        let before = head.len();
        let budget = (limits.max_header_bytes + 1).saturating_sub(head.len()) as u64;
        match reader.by_ref().take(budget).read_until(b'\n', &mut head) {
            Ok(0) if head.len() > limits.max_header_bytes => return Err(431),
            Ok(0) => return Err(400),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(408)
            }
            Err(_) => return Err(400),
        }
        if head.len() > limits.max_header_bytes {
            return Err(431);
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !line.ends_with(b"\n") {
            return Err(400);
        }
    }
    parse_head(&head).ok_or(400)
}

fn parse_head(raw: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let mut request = lines.next()?.split(' ');
    let (method, target, version) = (request.next()?, request.next()?, request.next()?);
    if request.next().is_some()
        || !version.starts_with("HTTP/1.")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return None;
    }
    let mut authorization = None;
    let mut content_length = 0usize;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok()?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked bodies are not accepted: no endpoint takes a body.
            return None;
        }
    }
    Some(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        authorization,
        content_length,
    })
}

fn write_response(stream: &mut TcpStream, response: &Response, head_only: bool) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        response.status,
        reason_phrase(response.status),
        response.content_type,
        response.body.len()
    );
    if response.status == 401 {
        head.push_str("WWW-Authenticate: Bearer realm=\"heapwatch\"\r\n");
    }
    if response.status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    if let Some(disposition) = &response.disposition {
        head.push_str(&format!("Content-Disposition: {disposition}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(&response.body)?;
    }
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        let head =
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\n\r\n")
                .unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/metrics");
        assert_eq!(head.authorization.as_deref(), Some("Bearer abc"));
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: many\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"\xff\xfe / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
