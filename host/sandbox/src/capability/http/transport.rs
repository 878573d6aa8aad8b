//! The wire: sends a request that the policy already allowed.
//!
//! This layer adds its own guarantees rather than trusting its caller's:
//! names resolve only through the screening resolver, no proxy from the
//! environment is used, redirects are never followed (the 3xx goes back to the
//! guest, which may ask again and be judged again), and the response body is
//! read with a cap, never buffered past it.

use super::resolve::{AddressRefused, HostResolver, ScreeningResolver};
use std::sync::Arc;
use std::time::Duration;

/// A request ready for the wire (policy checked, credential injected).
pub struct WireRequest {
    pub method: reqwest::Method,
    pub url: url::Url,
    pub headers: reqwest::header::HeaderMap,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
    pub max_response_bytes: u64,
}

pub struct WireResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub enum WireError {
    /// The screening resolver refused the name's addresses.
    AddressRefused(AddressRefused),
    Timeout,
    Connection(String),
    /// The body would pass the cap: (cap, bytes seen or announced).
    TooLarge {
        cap: u64,
        seen: u64,
    },
}

pub struct Transport {
    client: reqwest::Client,
}

impl Transport {
    pub fn new(resolver: Arc<dyn HostResolver>) -> anyhow::Result<Transport> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(ScreeningResolver { inner: resolver }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Transport { client })
    }

    pub async fn send(&self, req: WireRequest) -> Result<WireResponse, WireError> {
        let cap = req.max_response_bytes;
        let timeout = req.timeout;
        let mut builder = self.client.request(req.method, req.url).headers(req.headers).timeout(timeout);
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        let exchange = async move {
            let mut resp = builder.send().await.map_err(classify_error)?;
            if let Some(len) = resp.content_length() {
                if len > cap {
                    return Err(WireError::TooLarge { cap, seen: len });
                }
            }
            let status = resp.status().as_u16();
            let headers = resp.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())).collect();
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(classify_error)? {
                if body.len() as u64 + chunk.len() as u64 > cap {
                    return Err(WireError::TooLarge { cap, seen: body.len() as u64 + chunk.len() as u64 });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(WireResponse { status, headers, body })
        };
        // reqwest's timeout covers the body too; this outer one is the guarantee.
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(WireError::Timeout),
        }
    }
}

fn classify_error(e: reqwest::Error) -> WireError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<AddressRefused>() {
            return WireError::AddressRefused(refused.clone());
        }
        source = s.source();
    }
    if e.is_timeout() {
        return WireError::Timeout;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    WireError::Connection(text)
}
