//! A small HTTP/1.1 server on std's sockets. One thread multiplexes every connection with
//! poll(2): it accepts, reads each request and writes each answer without blocking, each stage
//! under a deadline; a few workers only render pages. A slow or silent client therefore holds
//! a slot in a bounded table, never a worker, and cannot make the others wait. One request per
//! connection, strict limits. Enough for scrapers and people; nothing from a request ever
//! reaches the filesystem (see `routes`).

use super::clients::Client;
use super::pprof_pages::Answer;
use super::routes::{answer_under, reason_phrase, Context, Response};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
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
    /// Time a client has to send its whole request, head and body, from the moment its
    /// connection is accepted; then it is answered 408 and closed.
    pub read_timeout: Duration,
    /// Time a client has to take the whole response, from the moment it is ready; then the
    /// connection is reset.
    pub write_timeout: Duration,
    /// Pages rendered at once.
    pub workers: usize,
    /// Requests waiting for a worker; more are answered 503.
    pub queue: usize,
    /// Connections open at once. A new connection beyond them closes the newest one that has
    /// not sent a byte yet (so a flood of silent connections evicts its own, not a client that
    /// connected before it), else the one nearest its deadline among those still sending their
    /// request or taking their answer — a slow client — so slow clients cannot lock others out;
    /// only when every one waits for a worker is the new one answered 503.
    pub max_connections: usize,
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
            // Three times the requests in hand at most (4 rendering, 16 waiting): room for
            // dozens of slow clients besides. Each costs a descriptor and up to 9 KiB of
            // request buffer (and its answer while that is sent).
            max_connections: 64,
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

/// The running listener; dropping it stops it and joins its threads.
///
/// A forked child inherits the value but not the threads: dropping it there leaves the
/// parent's listener alone (it neither joins nor wakes anything) and closes the child's copies
/// of the listener's descriptors, so the child does not keep the port open. Its copies of the
/// client connections are closed at the fork already (a fork handler), so none stays open to
/// its client once the parent closes it. The child can start a listener of its own.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    /// The process that started it: in any other (a forked child) its threads do not exist.
    process: crate::fork::ProcessIdentity,
    stop: Arc<AtomicBool>,
    wake: Option<Arc<Wake>>,
    /// The polling thread, then the workers.
    threads: Vec<JoinHandle<()>>,
    /// The descriptors the threads own, for a forked child to close its copies of.
    descriptors: Vec<Descriptor>,
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
    /// When the address does not resolve or cannot be bound, or a thread cannot be started.
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
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let wake = Arc::new(Wake::new()?);
        let descriptors = vec![
            Descriptor::of(&listener)?,
            Descriptor::of(&wake.rx)?,
            Descriptor::of(&wake.tx)?,
        ];
        let context = Arc::new(Context {
            token,
            dump_dir: self.dump_dir,
            metrics: super::metrics_page::render_metrics,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let limits = self.limits;
        let (jobs, queued) = mpsc::sync_channel::<Job>(limits.queue.max(1));
        let (done, finished) = mpsc::channel::<Done>();
        let queued = Arc::new(Mutex::new(queued));
        // Should a spawn fail, the threads already started end by themselves: `jobs` is
        // dropped on the way out, and their `recv` fails.
        let mut threads = Vec::with_capacity(limits.workers.max(1) + 1);
        for i in 0..limits.workers.max(1) {
            let (queued, done, wake, context, stop) = (
                Arc::clone(&queued),
                done.clone(),
                Arc::clone(&wake),
                Arc::clone(&context),
                Arc::clone(&stop),
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("heapwatch-http-{i}"))
                    .spawn(move || work(&queued, &done, &wake, &context, &stop))?,
            );
        }
        let poller = {
            let (wake, stop) = (Arc::clone(&wake), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("heapwatch-http".to_owned())
                .spawn(move || serve(&listener, &wake, &stop, &jobs, &finished, limits))?
        };
        threads.insert(0, poller);
        tracing::info!(addr = %local_addr, auth = context.token.is_some(), "heapwatch: serving /metrics and /debug/pprof/heap");
        Ok(Server {
            local_addr,
            process: crate::fork::process_identity(),
            stop,
            wake: Some(wake),
            threads,
            descriptors,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.process.is_current() {
            // A forked child. The threads are the parent's: joining one would wait for a
            // thread this process does not have, and waking the poller through the shared
            // socket pair would wake the parent's. Leave every handle unused (neither joined
            // nor detached: they name threads of another process), and close this process's
            // copies of the descriptors, which nothing here would ever close otherwise.
            for thread in self.threads.drain(..) {
                std::mem::forget(thread);
            }
            if let Some(wake) = self.wake.take() {
                std::mem::forget(wake);
            }
            for descriptor in self.descriptors.drain(..) {
                descriptor.close_if_unchanged();
            }
            return;
        }
        self.stop.store(true, Ordering::Release);
        if let Some(wake) = &self.wake {
            wake.wake();
        }
        // Only the poller is waited for: its end closes every connection and drops the job
        // queue. The workers end by themselves once the queue is closed; one still rendering
        // (a first symbolization takes a while) must not hold up the service's drop, so they are
        // detached, not joined.
        let mut threads = self.threads.drain(..);
        if let Some(poller) = threads.next() {
            let _ = poller.join();
        }
        threads.for_each(drop);
    }
}

/// A descriptor and the file it referred to when recorded (device and inode), so a forked
/// child can close its copy without closing whatever may since have taken the same number.
#[derive(Debug, Clone, Copy)]
struct Descriptor {
    fd: RawFd,
    dev: libc::dev_t,
    ino: libc::ino_t,
}

impl Descriptor {
    fn of(fd: &impl AsRawFd) -> io::Result<Self> {
        let (dev, ino) = identity(fd.as_raw_fd())?;
        Ok(Descriptor {
            fd: fd.as_raw_fd(),
            dev,
            ino,
        })
    }

    /// Closes the descriptor if it still refers to the file recorded.
    fn close_if_unchanged(self) {
        if identity(self.fd).is_ok_and(|found| found == (self.dev, self.ino)) {
            // SAFETY: the descriptor is open and refers to the socket recorded at start, whose
            // owner (a thread of the parent's) does not exist in this process: nothing else
            // here owns or will close this copy.
            unsafe { libc::close(self.fd) };
        }
    }
}

/// The device and inode `fd` refers to.
fn identity(fd: RawFd) -> io::Result<(libc::dev_t, libc::ino_t)> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes at most one `stat` into the buffer given, which is that large.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0, so it filled the struct in.
    let stat = unsafe { stat.assume_init() };
    Ok((stat.st_dev, stat.st_ino))
}

/// Wakes the poller from poll(2): a byte on a socket pair. Both ends live as long as anyone
/// may write (the poller, the workers and the `Server` each hold the pair), so a write never
/// meets a closed reader and never raises SIGPIPE.
#[derive(Debug)]
struct Wake {
    rx: UnixStream,
    tx: UnixStream,
}

impl Wake {
    fn new() -> io::Result<Self> {
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        Ok(Wake { rx, tx })
    }

    fn wake(&self) {
        // A full buffer means a wake-up is pending already.
        let _ = (&self.tx).write(&[1]);
    }

    fn drain(&self) {
        let mut buffer = [0u8; 64];
        while matches!((&self.rx).read(&mut buffer), Ok(n) if n > 0) {}
    }
}

/// A request read whole, for a worker to answer.
struct Job {
    id: u64,
    head: Head,
    /// Set by the poller when the client closed its end: a page that waits stops waiting.
    gone: Arc<AtomicBool>,
}

/// A worker's answer to job `id`; `None`: the client went away while it waited, nobody to
/// answer.
struct Done {
    id: u64,
    response: Option<Response>,
}

fn work(
    queued: &Mutex<Receiver<Job>>,
    done: &Sender<Done>,
    wake: &Wake,
    context: &Context,
    stop: &AtomicBool,
) {
    loop {
        let next = match queued.lock() {
            Ok(queued) => queued.recv(),
            Err(_) => return,
        };
        let Ok(job) = next else { return };
        if stop.load(Ordering::Acquire) {
            return;
        }
        // A panic in a page must not take the worker down with it.
        let response =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                match answer_under(
                    context,
                    "",
                    &job.head.method,
                    &job.head.target,
                    job.head.authorization.as_deref(),
                ) {
                    Answer::Now(response) => Some(response),
                    Answer::Later(wait) => wait.wait(&|| job.gone.load(Ordering::Acquire)),
                }
            }))
            .unwrap_or_else(|_| Some(plain(500)));
        if done
            .send(Done {
                id: job.id,
                response,
            })
            .is_err()
        {
            return;
        }
        wake.wake();
    }
}

fn plain(status: u16) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        disposition: None,
        body: format!("{}\n", reason_phrase(status)).into_bytes(),
        // Only 503 comes here with a reason to retry: every worker was busy.
        retry_after: (status == 503).then_some(super::budget::RETRY_AFTER_SECONDS),
        held: Default::default(),
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

/// One client connection and where its exchange stands.
struct Conn {
    id: u64,
    stream: Client,
    state: State,
    /// When the current stage must be over: receiving the request, or sending the answer.
    /// `None` while a worker renders (bounded by the queue, not by the client).
    deadline: Option<Instant>,
}

enum State {
    /// Receiving the request.
    Reading(Incoming),
    /// A worker renders the answer; for HEAD, only its head is to be sent. `gone` is set once
    /// the client closed its end (or the connection failed): the worker's page stops if it
    /// waits, and the connection is no longer polled (the condition would report at every
    /// round).
    Rendering {
        head_only: bool,
        gone: Arc<AtomicBool>,
    },
    /// The answer's head and body; `sent` counts bytes of both, head first.
    Writing {
        head: Vec<u8>,
        body: Vec<u8>,
        sent: usize,
        /// The body's share of the response budget, given back once it is written or the
        /// connection is dropped.
        _held: super::response::HeldBudget,
    },
    /// Finished: removed at the end of the round.
    Closed,
}

/// Everything the poller works with besides the connections.
struct Poller<'a> {
    jobs: &'a SyncSender<Job>,
    limits: Limits,
    now: Instant,
}

impl Conn {
    fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Still waiting for the first byte of its request.
    fn is_silent(&self) -> bool {
        matches!(&self.state, State::Reading(incoming) if incoming.received.is_empty())
    }

    /// Reads what the client sent, or sends more of the answer, as the state asks.
    fn progress(&mut self, poller: &Poller) {
        match self.state {
            State::Reading(_) => self.receive(poller),
            State::Writing { .. } => self.send(),
            State::Rendering { ref gone, .. } => gone.store(true, Ordering::Release),
            State::Closed => {}
        }
    }

    fn receive(&mut self, poller: &Poller) {
        let State::Reading(incoming) = &mut self.state else {
            return;
        };
        let limits = poller.limits;
        // Room for the longest request allowed and one byte more, which tells it was too long.
        let room = (limits
            .max_header_bytes
            .saturating_add(limits.max_body_bytes))
        .saturating_add(1)
        .saturating_sub(incoming.received.len());
        let mut chunk = [0u8; 4096];
        let ended = match (&*self.stream).read(&mut chunk[..room.min(4096)]) {
            Ok(0) => true,
            Ok(n) => {
                incoming.received.extend_from_slice(&chunk[..n]);
                false
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            // Reset by the client: nobody to answer.
            Err(_) => {
                self.state = State::Closed;
                return;
            }
        };
        match incoming.check(limits, ended) {
            Ok(None) => {}
            Ok(Some(head)) => self.dispatch(head, poller),
            Err(status) => self.answer(plain(status), false, poller),
        }
    }

    fn dispatch(&mut self, head: Head, poller: &Poller) {
        let head_only = head.method == "HEAD";
        let gone = Arc::new(AtomicBool::new(false));
        let job = Job {
            id: self.id,
            head,
            gone: Arc::clone(&gone),
        };
        match poller.jobs.try_send(job) {
            Ok(()) => {
                self.state = State::Rendering { head_only, gone };
                self.deadline = None;
            }
            Err(TrySendError::Full(_)) => self.answer(plain(503), head_only, poller),
            Err(TrySendError::Disconnected(_)) => self.state = State::Closed,
        }
    }

    /// Starts sending `response`, under the write deadline.
    fn answer(&mut self, response: Response, head_only: bool, poller: &Poller) {
        let head = response_head(&response);
        let body = if head_only { Vec::new() } else { response.body };
        self.state = State::Writing {
            head,
            body,
            sent: 0,
            _held: response.held,
        };
        self.deadline = Some(deadline_after(poller.now, poller.limits.write_timeout));
        // Most answers fit the socket's buffer and go at once.
        self.send();
    }

    fn send(&mut self) {
        let State::Writing {
            head, body, sent, ..
        } = &mut self.state
        else {
            return;
        };
        loop {
            let rest = match sent.checked_sub(head.len()) {
                None => &head[*sent..],
                Some(into_body) => &body[into_body..],
            };
            if rest.is_empty() {
                let _ = self.stream.shutdown(Shutdown::Write);
                self.state = State::Closed;
                return;
            }
            match (&*self.stream).write(rest) {
                Ok(n) if n > 0 => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Ok(_) | Err(_) => {
                    self.state = State::Closed;
                    return;
                }
            }
        }
    }

    /// Ends the exchange early, at its deadline or to make room: a client still sending its
    /// request is answered 408 (one write that cannot block), one not taking its answer is
    /// reset, which also discards what the kernel still holds for it.
    fn cut(&mut self, poller: &Poller) {
        if matches!(self.state, State::Reading(_)) {
            self.answer(plain(408), false, poller);
        }
        if matches!(self.state, State::Writing { .. }) {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a live `linger`; the
            // descriptor is this connection's, open until the stream is dropped.
            unsafe {
                libc::setsockopt(
                    self.stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
        }
        self.state = State::Closed;
    }
}

/// A request being received.
#[derive(Default)]
struct Incoming {
    received: Vec<u8>,
    /// Where the line being received starts, and how far it has been searched for its end:
    /// each byte is scanned once, however slowly the head arrives.
    line_start: usize,
    searched: usize,
    /// The head and its length in bytes, once it has all come.
    head: Option<(Head, usize)>,
}

impl Incoming {
    /// Where the request stands after more bytes came (`ended`: the client will send no
    /// more): its head once head and body are whole, `None` while more must come, or the
    /// status to refuse it with.
    fn check(&mut self, limits: Limits, ended: bool) -> Result<Option<Head>, u16> {
        if self.head.is_none() {
            match self.head_end() {
                Some(len) if len > limits.max_header_bytes => return Err(431),
                Some(len) => {
                    let head = parse_head(&self.received[..len]).ok_or(400u16)?;
                    if head.content_length > limits.max_body_bytes {
                        return Err(413);
                    }
                    self.head = Some((head, len));
                }
                None if self.received.len() > limits.max_header_bytes => return Err(431),
                None if ended => return Err(400),
                None => return Ok(None),
            }
        }
        let whole = self.head.as_ref().is_some_and(|(head, len)| {
            self.received.len() >= len.saturating_add(head.content_length)
        });
        if whole {
            Ok(self.head.take().map(|(head, _)| head))
        } else if ended {
            Err(400)
        } else {
            Ok(None)
        }
    }

    /// The length of the head, up to and including the empty line that ends it, once it has
    /// all come.
    fn head_end(&mut self) -> Option<usize> {
        loop {
            let line = &self.received[self.line_start..];
            if line.starts_with(b"\r\n") {
                return Some(self.line_start + 2);
            }
            if line.starts_with(b"\n") {
                return Some(self.line_start + 1);
            }
            let from = self.searched.max(self.line_start);
            match self.received[from..].iter().position(|&b| b == b'\n') {
                Some(at) => {
                    self.line_start = from + at + 1;
                    self.searched = self.line_start;
                }
                None => {
                    self.searched = self.received.len();
                    return None;
                }
            }
        }
    }
}

/// Pauses accepting after an error. At the descriptor limit (EMFILE, ENFILE) or short of
/// memory, accept fails at once for as long as the condition lasts, and retrying at once
/// spins a core; clients wait in the listen backlog meanwhile.
#[derive(Debug, Default)]
struct Backoff {
    pause: Option<Duration>,
    until: Option<Instant>,
}

impl Backoff {
    /// 5 ms, doubling to 1 s: short enough that a passing shortage costs little, long enough
    /// that a lasting one costs nothing; a second at most to notice descriptors freed.
    const FIRST: Duration = Duration::from_millis(5);
    const LONGEST: Duration = Duration::from_secs(1);

    fn ready(&self, now: Instant) -> bool {
        self.until.is_none_or(|until| now >= until)
    }

    /// When accepting resumes, if that is still to come.
    fn resumes(&self, now: Instant) -> Option<Instant> {
        self.until.filter(|&until| until > now)
    }

    fn failed(&mut self, now: Instant, error: &io::Error) {
        if self.pause.is_none() {
            tracing::warn!(%error, "heapwatch: accepting a connection failed; pausing, 5 ms doubling to 1 s, until one succeeds");
        }
        let pause = self
            .pause
            .map_or(Self::FIRST, |pause| (pause * 2).min(Self::LONGEST));
        self.pause = Some(pause);
        self.until = Some(now + pause);
    }

    fn succeeded(&mut self) {
        *self = Backoff::default();
    }
}

/// The poller: accepts, reads requests, hands them to the workers, and writes the answers,
/// until `stop`.
fn serve(
    listener: &TcpListener,
    wake: &Wake,
    stop: &AtomicBool,
    jobs: &SyncSender<Job>,
    finished: &Receiver<Done>,
    limits: Limits,
) {
    let max_connections = limits.max_connections.max(1);
    let mut conns: Vec<Conn> = Vec::with_capacity(max_connections);
    let mut polled: Vec<libc::pollfd> = Vec::with_capacity(max_connections + 2);
    // `owners[k]` is the connection of `polled[k + 2]`.
    let mut owners: Vec<usize> = Vec::with_capacity(max_connections);
    let mut accepting = Backoff::default();
    let mut next_id = 0u64;
    while !stop.load(Ordering::Acquire) {
        let mut poller = Poller {
            jobs,
            limits,
            now: Instant::now(),
        };
        for conn in &mut conns {
            if conn.deadline.is_some_and(|deadline| deadline <= poller.now) {
                conn.cut(&poller);
            }
        }
        conns.retain(|conn| !conn.is_closed());

        let listening = accepting.ready(poller.now);
        polled.clear();
        owners.clear();
        polled.push(pollfd(wake.rx.as_raw_fd(), libc::POLLIN));
        // A negative descriptor is skipped by poll(2): paused, the listener is not watched.
        polled.push(pollfd(
            if listening { listener.as_raw_fd() } else { -1 },
            libc::POLLIN,
        ));
        for (i, conn) in conns.iter().enumerate() {
            let events = match &conn.state {
                State::Reading(_) => libc::POLLIN,
                State::Writing { .. } => libc::POLLOUT,
                // Only the client's end closing (or the connection failing: POLLHUP and
                // POLLERR are reported whatever is asked), not bytes it may send meanwhile.
                State::Rendering { gone, .. } if !gone.load(Ordering::Relaxed) => PEER_CLOSED,
                State::Rendering { .. } | State::Closed => continue,
            };
            polled.push(pollfd(conn.stream.as_raw_fd(), events));
            owners.push(i);
        }
        let next_deadline = conns
            .iter()
            .filter_map(|conn| conn.deadline)
            .chain(accepting.resumes(poller.now))
            .min();
        if let Err(error) = poll(&mut polled, timeout_ms(next_deadline, poller.now)) {
            if error.kind() != io::ErrorKind::Interrupted {
                // Not expected (EINVAL: a descriptor limit below the table's size); a pause
                // keeps a lasting failure from spinning.
                tracing::debug!(%error, "heapwatch: poll failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }

        poller.now = Instant::now();
        if polled[0].revents != 0 {
            wake.drain();
        }
        while let Ok(done) = finished.try_recv() {
            if let Some(conn) = conns.iter_mut().find(|conn| conn.id == done.id) {
                let head_only = matches!(
                    conn.state,
                    State::Rendering {
                        head_only: true,
                        ..
                    }
                );
                match done.response {
                    Some(response) => conn.answer(response, head_only, &poller),
                    None => conn.state = State::Closed,
                }
            }
        }
        for (k, &i) in owners.iter().enumerate() {
            if polled[k + 2].revents != 0 {
                conns[i].progress(&poller);
            }
        }
        if listening && polled[1].revents != 0 {
            // At most a table's worth per round, so the others are served during a flood.
            for _ in 0..max_connections {
                let stream = match Client::accept(listener) {
                    Ok(stream) => stream,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                        ) =>
                    {
                        continue
                    }
                    Err(e) => {
                        accepting.failed(poller.now, &e);
                        break;
                    }
                };
                accepting.succeeded();
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let open = conns.iter().filter(|conn| !conn.is_closed()).count();
                if open >= max_connections && !make_room(&mut conns, &poller) {
                    refuse(&stream);
                    continue;
                }
                conns.push(Conn {
                    id: next_id,
                    stream,
                    state: State::Reading(Incoming::default()),
                    deadline: Some(deadline_after(poller.now, limits.read_timeout)),
                });
                next_id += 1;
            }
        }
        conns.retain(|conn| !conn.is_closed());
    }
}

/// Cuts the open connection nearest its deadline, of those a worker does not hold: the
/// slowest client still sending its request or taking its answer. False when every
/// connection waits for a worker.
/// `now + timeout`, for any timeout a caller may configure (`Duration::MAX` for "none" would
/// overflow an `Instant`): at most a year ahead.
fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(timeout.min(LONGEST)).unwrap_or(now)
}

fn make_room(conns: &mut [Conn], poller: &Poller) -> bool {
    // A flood of connections that send nothing must not evict a client that connected before
    // it: the newest connection that has not sent a byte goes first (under a flood, one of the
    // flood's); only when every one has sent something, the one nearest its deadline (the
    // slowest).
    let silent = conns
        .iter()
        .enumerate()
        .filter(|(_, conn)| conn.is_silent())
        .max_by_key(|(_, conn)| conn.id)
        .map(|(index, _)| index);
    let slowest = || {
        conns
            .iter()
            .enumerate()
            .filter(|(_, conn)| !conn.is_closed() && conn.deadline.is_some())
            .min_by_key(|(_, conn)| conn.deadline)
            .map(|(index, _)| index)
    };
    match silent
        .or_else(slowest)
        .and_then(|index| conns.get_mut(index))
    {
        Some(victim) => {
            victim.cut(poller);
            true
        }
        None => false,
    }
}

/// Answers 503 to a connection there is no room for, with one write that cannot block (the
/// socket is non-blocking, and a short answer fits its empty buffer), and closes it.
fn refuse(stream: &TcpStream) {
    let response = plain(503);
    let mut answer = response_head(&response);
    answer.extend_from_slice(&response.body);
    let _ = (&*stream).write(&answer);
    let _ = stream.shutdown(Shutdown::Write);
}

/// The poll(2) event of a peer that closed its end (shut down writing or closed), where the
/// system reports it apart from readable data; elsewhere only a hang-up or an error tells.
#[cfg(any(target_os = "linux", target_os = "android"))]
const PEER_CLOSED: libc::c_short = libc::POLLRDHUP;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const PEER_CLOSED: libc::c_short = 0;

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Waits for any of `fds` to be ready, or `timeout_ms` (-1: no limit).
fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<()> {
    // SAFETY: `fds` is a live, exclusively borrowed slice of `fds.len()` pollfd structs; poll(2)
    // reads their `fd` and `events` and writes their `revents`, within the slice and during
    // the call only.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if ready < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The poll(2) timeout until `at`, rounded up so the deadline has passed when poll returns
/// (rounded down, a wait of under a millisecond would be 0 and spin until the deadline).
fn timeout_ms(at: Option<Instant>, now: Instant) -> libc::c_int {
    match at {
        None => -1,
        Some(at) => {
            let millis = at.saturating_duration_since(now).as_micros().div_ceil(1000);
            libc::c_int::try_from(millis).unwrap_or(libc::c_int::MAX)
        }
    }
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

/// The status line and headers of `response`, with the blank line that ends them.
fn response_head(response: &Response) -> Vec<u8> {
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
    if let Some(seconds) = response.retry_after {
        head.push_str(&format!("Retry-After: {seconds}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
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
