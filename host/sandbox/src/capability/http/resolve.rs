//! Name resolution for egress, done by the host and screened before connecting.
//!
//! The transport's HTTP client resolves names only through [`ScreeningResolver`],
//! which looks the name up once, refuses it if any address is not public, and
//! hands the client exactly the addresses it judged. There is no second lookup,
//! so a DNS answer cannot change between the check and the connection.

use super::address::{classify, AddressClass};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

pub type LookupFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Looks up the addresses of a host name. Injectable so tests can make a name
/// resolve to anything without touching the machine's DNS.
pub trait HostResolver: Send + Sync + 'static {
    fn lookup<'a>(&'a self, host: &'a str) -> LookupFuture<'a>;
}

/// The operating system's resolver.
pub struct SystemResolver;

impl HostResolver for SystemResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> LookupFuture<'a> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// A fixed table of names, for tests; unknown names do not resolve.
#[derive(Default, Clone)]
pub struct StaticResolver(pub HashMap<String, Vec<IpAddr>>);

impl StaticResolver {
    pub fn with(mut self, host: &str, ips: &[&str]) -> Self {
        self.0.insert(host.to_string(), ips.iter().map(|s| s.parse().expect("test IP")).collect());
        self
    }
}

impl HostResolver for StaticResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> LookupFuture<'a> {
        let found = self.0.get(host).cloned();
        Box::pin(async move { found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no such host `{host}`"))) })
    }
}

/// A name resolved to an address that is not public.
#[derive(Debug, Clone)]
pub struct AddressRefused {
    pub host: String,
    pub address: IpAddr,
    pub class: AddressClass,
}

impl AddressRefused {
    pub const RULE: &'static str = "address-screen";
}

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` resolves to {} ({}), which is not a public address; warden refuses it so a step cannot reach internal networks (name the address as an IP literal in a rule to allow it)",
            self.host,
            self.address,
            self.class.as_str()
        )
    }
}

impl std::error::Error for AddressRefused {}

/// Looks a name up and judges every address before the client may connect.
pub fn screen(host: &str, addrs: Vec<IpAddr>) -> Result<Vec<IpAddr>, AddressRefused> {
    // One internal address refuses the whole name: a public name has no reason
    // to resolve inside the network, and mixing answers is a rebinding trick.
    for ip in &addrs {
        let class = classify(*ip);
        if class != AddressClass::Public {
            return Err(AddressRefused { host: host.to_string(), address: *ip, class });
        }
    }
    Ok(addrs)
}

/// The reqwest resolver: lookup through the injected resolver, then [`screen`].
pub struct ScreeningResolver {
    pub inner: Arc<dyn HostResolver>,
}

impl reqwest::dns::Resolve for ScreeningResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let inner = self.inner.clone();
        Box::pin(async move {
            let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
            let addrs = inner.lookup(&host).await?;
            if addrs.is_empty() {
                return Err(Box::new(io::Error::new(io::ErrorKind::NotFound, format!("`{host}` has no addresses"))) as Box<dyn std::error::Error + Send + Sync>);
            }
            let passed = screen(&host, addrs).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            let iter: reqwest::dns::Addrs = Box::new(passed.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(iter)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_any_internal_address_is_refused_whole() {
        let e = screen("evil.test", vec!["8.8.8.8".parse().unwrap(), "10.0.0.1".parse().unwrap()]).unwrap_err();
        assert_eq!(e.class, AddressClass::Private);
        assert!(e.to_string().contains("not a public address"));
        assert!(screen("ok.test", vec!["8.8.8.8".parse().unwrap()]).is_ok());
    }
}
