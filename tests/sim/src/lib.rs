//! Local stand-ins for the services warden's plugins talk to, served on
//! 127.0.0.1 for tests and for the README demo.
//!
//! * [`origin`]: a plain test origin (echo, large and endless bodies, slow
//!   bodies, redirects) that records what it received.

pub mod origin;

use std::net::SocketAddr;

/// A server running on a background task; stops when dropped.
pub struct Running {
    pub addr: SocketAddr,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Serves `router` on an ephemeral 127.0.0.1 port.
pub async fn serve(router: axum::Router) -> std::io::Result<Running> {
    serve_on("127.0.0.1:0", router).await
}

pub async fn serve_on(addr: &str, router: axum::Router) -> std::io::Result<Running> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(Running { addr, handle })
}
