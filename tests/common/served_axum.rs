//! An axum app served on loopback by a tokio runtime of its own, for the tests of the axum
//! router. Included by those tests alone (`#[path]`), so the others do not build axum's server.

#![allow(dead_code)]

/// An app being served; it stops when dropped.
pub struct Served {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl Served {
    /// The address as `host:port`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

/// Serves `app` on a loopback port with a multi-threaded runtime of `workers` threads, as a
/// service would.
pub fn serve(app: axum::Router, workers: usize) -> Served {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    runtime.spawn(async move { axum::serve(listener, app).await });
    Served {
        addr,
        _runtime: runtime,
    }
}
