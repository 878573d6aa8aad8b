//! Layer 8 for `kind = "oauth2"` credentials: the host is the OAuth client.
//!
//! The access token a client-credentials exchange mints is as secret as the
//! client secret that minted it, so neither ever reaches the guest. The host
//! asks the token endpoint itself — through the same [`Transport`] as all
//! egress (no redirects, no proxy, screened names, a capped answer) — keeps
//! the token in the credential's [`TokenCache`] until shortly before it
//! expires, and injects `Authorization: Bearer …`. A 401 from the API drops
//! that token and makes [`super::deliver`] ask once for a new one.
//!
//! Each exchange is audited on the record of the request that caused it
//! ([`TokenExchange`]: endpoint, status, duration, why): never the token,
//! which is also scrubbed from every answer like any injected value.

use super::transport::{Transport, WireError, WireRequest};
use crate::audit::TokenExchange;
use crate::policy::credentials::{ClientAuth, OAuth2, Secret};
use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue};
use std::time::{Duration, Instant};

/// Longest wait for a token endpoint.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a token endpoint's answer read.
const MAX_TOKEN_ANSWER: u64 = 64 * 1024;
/// Longest access token accepted (a JWT with many claims is a few KiB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Lifetime assumed when the endpoint does not say (`expires_in` is optional).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Longest a token is kept, whatever the endpoint says.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A token is replaced this long before it expires (at most half its life).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Least time between two exchanges forced by a 401: an API that refuses
/// every token (or a guest that keeps asking where it may not) cannot make
/// the host hammer the token endpoint.
const MIN_FORCED_GAP: Duration = Duration::from_secs(5);

/// First wait after a failed exchange before the endpoint is asked again;
/// it doubles with each failure in a row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The token caches of a runtime's `oauth2` credentials, one per credential
/// as configured (name, token endpoint, client, scopes, where its secret
/// comes from): state of the HTTP capability, shared by every invocation,
/// so that the policy stays plain data. A policy reloaded with the same
/// credential keeps its token; one that changes it gets a fresh cache.
#[derive(Default)]
pub struct Tokens(std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<TokenCache>>>);

impl Tokens {
    /// The cache of `spec`, an `oauth2` credential with `cfg`.
    pub fn of(&self, spec: &crate::policy::credentials::CredentialSpec, cfg: &OAuth2) -> std::sync::Arc<TokenCache> {
        let key = format!("{}\n{}\n{:?}\n{:?}\n{:?}\n{:?}", spec.name, cfg.token_url, cfg.client_id, cfg.scopes, cfg.client_auth, spec.source);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().clone()
    }
}

/// The current access token of one credential.
#[derive(Default)]
pub struct TokenCache {
    // An async mutex: concurrent requests wait for one exchange instead of each making one.
    slot: tokio::sync::Mutex<Option<Cached>>,
    minted: std::sync::atomic::AtomicU64,
    /// The last exchange failed: until its wait is over, requests are told
    /// so without asking the endpoint (a refusing or unreachable endpoint is
    /// not asked on every request).
    failing: std::sync::Mutex<Option<Failing>>,
}

struct Failing {
    at: Instant,
    wait: Duration,
    why: String,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache([hidden])")
    }
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
    generation: u64,
    /// When an exchange was last forced by a 401 (see [`MIN_FORCED_GAP`]).
    forced_at: Option<Instant>,
}

/// A token to inject, and which one it is (to drop exactly it after a 401).
pub struct Token {
    pub secret: Secret,
    pub generation: u64,
    /// Minted for this request (a 401 then is not worth another exchange).
    pub fresh: bool,
}

/// Why no token could be had; said to the operator, never to the guest.
pub struct TokenFailure(pub String);

impl TokenCache {
    /// A token valid now: the cached one, or a new one. `stale` is a token
    /// the API refused (401): if it is still the cached one, it is replaced.
    /// An exchange made here is added to `audit`.
    pub async fn get(
        &self,
        name: &str,
        cfg: &OAuth2,
        client_secret: &Secret,
        transport: &Transport,
        stale: Option<u64>,
        audit: &mut Vec<TokenExchange>,
    ) -> Result<Token, TokenFailure> {
        let mut slot = self.slot.lock().await;
        let forced_at = slot.as_ref().and_then(|c| c.forced_at);
        let why = match &*slot {
            Some(c) if stale == Some(c.generation) && c.forced_at.is_some_and(|t| t.elapsed() < MIN_FORCED_GAP) => {
                // Refused again so soon: the 401 is the API's answer, not an expiry.
                return Ok(Token { secret: c.token.clone(), generation: c.generation, fresh: false });
            }
            Some(c) if stale == Some(c.generation) => "the API answered 401 to the cached token",
            Some(c) if Instant::now() >= c.refresh_at => "the cached token is about to expire",
            Some(c) => return Ok(Token { secret: c.token.clone(), generation: c.generation, fresh: false }),
            None => "first use",
        };
        if let Some(f) = self.failing.lock().unwrap_or_else(|p| p.into_inner()).as_ref().filter(|f| f.at.elapsed() < f.wait) {
            let left = f.wait.saturating_sub(f.at.elapsed()).as_secs_f64().ceil() as u64;
            return Err(TokenFailure(format!("{} (the token endpoint is asked again in {left}s)", f.why)));
        }
        let started = Instant::now();
        let mut record = TokenExchange { url: cfg.token_url.to_string(), why: why.to_string(), status: None, expires_in_s: None, error: None, duration_ms: 0 };
        let result = exchange(cfg, client_secret, transport, &mut record).await;
        record.duration_ms = started.elapsed().as_millis() as u64;
        audit.push(record.clone());
        match result {
            Ok((token, lifetime)) => {
                *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let generation = self.minted.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let margin = REFRESH_MARGIN.min(lifetime / 2);
                let forced_at = if stale.is_some() { Some(started) } else { forced_at };
                *slot = Some(Cached { token: token.clone(), refresh_at: started + lifetime - margin, generation, forced_at });
                tracing::info!(credential = name, token_url = %cfg.token_url, expires_in_s = lifetime.as_secs(), "obtained an OAuth2 access token ({why})");
                Ok(Token { secret: token, generation, fresh: true })
            }
            Err(why) => {
                // A refused token must not be used again.
                if stale.is_some() {
                    *slot = None;
                }
                let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
                let wait = failing.as_ref().map_or(FIRST_BACKOFF, |f| (f.wait * 2).min(MAX_BACKOFF));
                *failing = Some(Failing { at: Instant::now(), wait, why: why.clone() });
                tracing::warn!(credential = name, token_url = %cfg.token_url, "cannot obtain an OAuth2 access token: {why}; not asked again for {}s", wait.as_secs());
                Err(TokenFailure(why))
            }
        }
    }
}

/// The token request's headers and form body (built apart from the
/// exchange: the form encoder does not cross an await).
fn token_request(cfg: &OAuth2, client_secret: &Secret) -> Result<(HeaderMap, Vec<u8>), String> {
    let client_id = cfg.client_id.read()?;
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if !cfg.scopes.is_empty() {
        form.append_pair("scope", &cfg.scopes.join(" "));
    }
    let mut headers = HeaderMap::new();
    headers.insert(reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
    headers.insert(reqwest::header::ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(reqwest::header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    match cfg.client_auth {
        ClientAuth::Post => {
            form.append_pair("client_id", &client_id);
            form.append_pair("client_secret", client_secret.expose());
        }
        ClientAuth::Basic => {
            // RFC 6749 §2.3.1: each part form-encoded, then the pair as Basic.
            let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(&client_id), enc(client_secret.expose()));
            let mut v = HeaderValue::from_str(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
                .map_err(|_| "the client id or secret cannot be sent in a header".to_string())?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
    }
    Ok((headers, form.finish().into_bytes()))
}

/// One client-credentials exchange (RFC 6749 §4.4): the token and how long to keep it.
async fn exchange(cfg: &OAuth2, client_secret: &Secret, transport: &Transport, record: &mut TokenExchange) -> Result<(Secret, Duration), String> {
    let (headers, body) = token_request(cfg, client_secret)?;
    let wire = WireRequest {
        method: reqwest::Method::POST,
        url: cfg.token_url.clone(),
        headers,
        body: Some(body),
        timeout: TOKEN_TIMEOUT,
        max_response_bytes: MAX_TOKEN_ANSWER,
    };
    let answer = transport.send(wire).await.map_err(|e| {
        let why = match e {
            WireError::AddressRefused(r) => r.to_string(),
            WireError::Timeout => format!("no answer within {} s", TOKEN_TIMEOUT.as_secs()),
            // A transport message names the host, never the form we sent.
            WireError::Connection(m) => format!("cannot connect: {}", crate::invocation::guest_text(&m, 300)),
            WireError::TooLarge { .. } => format!("the answer passed {MAX_TOKEN_ANSWER} bytes"),
        };
        record.error = Some(why.clone());
        why
    })?;
    record.status = Some(answer.status);
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or(serde_json::Value::Null);
    if !(200..300).contains(&answer.status) {
        // Only the OAuth error code, as a code: an error description could echo what was sent.
        let code = body["error"].as_str().filter(|c| c.len() <= 64 && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.' || ch == '-'));
        let why = match code {
            Some(c) => format!("the token endpoint answered {} ({c})", answer.status),
            None => format!("the token endpoint answered {}", answer.status),
        };
        record.error = Some(why.clone());
        return Err(why);
    }
    let refuse = |record: &mut TokenExchange, why: &str| {
        record.error = Some(why.to_string());
        why.to_string()
    };
    let Some(token) = body["access_token"].as_str().filter(|t| !t.is_empty()) else {
        return Err(refuse(record, "the token endpoint's answer has no access_token"));
    };
    if token.len() > MAX_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(refuse(record, "the access token is too long or holds characters a header cannot carry"));
    }
    if let Some(kind) = body["token_type"].as_str() {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(refuse(record, "the token endpoint issued a token that is not a bearer token"));
        }
    }
    // `expires_in` is a number; some servers send it as a string.
    let expires_in = body["expires_in"].as_u64().or_else(|| body["expires_in"].as_str().and_then(|s| s.trim().parse().ok()));
    record.expires_in_s = expires_in;
    let lifetime = expires_in.map(Duration::from_secs).unwrap_or(DEFAULT_LIFETIME).clamp(Duration::from_secs(1), MAX_LIFETIME);
    Ok((Secret::new(token.to_string()), lifetime))
}
