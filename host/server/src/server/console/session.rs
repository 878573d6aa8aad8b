//! Who is looking at the console, and whether a form post is really theirs.
//!
//! A person signs in once with an API token (the same tokens as `/api/*`); the
//! console then keeps a session cookie that names the token's scope and an
//! expiry, signed with a key of the run store's (so every node of a cluster
//! and every restart honours it) and bound to the token's digest (rotating a
//! token ends its sessions). The cookie holds no token. A script or `curl`
//! may send `Authorization: Bearer` instead.
//!
//! Every POST must come from a console page: a same-origin request
//! (`Sec-Fetch-Site` / `Origin`) carrying a CSRF token derived from the
//! session, so another site can neither forge nor read one.

use super::super::{ApiTokens, Principal, Scope};
use axum::http::{header, HeaderMap};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const COOKIE: &str = "warden_console";
/// How long a sign-in lasts.
pub const SESSION_SECS: u64 = 12 * 3600;

type HmacSha256 = Hmac<Sha256>;

/// The console's own key, derived from the store's key so that it serves no other purpose.
pub fn console_key(store_key: &[u8; 32]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(store_key).expect("HMAC takes any key length");
    mac.update(b"warden-console-session/1");
    mac.finalize().into_bytes().into()
}

/// A signed-in (or open-console) viewer.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// Who it is, and so what it may see and do.
    pub principal: Principal,
    /// What every form of this viewer carries.
    pub csrf: String,
    /// Whether a sign-out makes sense (a cookie session).
    pub signed_in: bool,
    /// The session this request belongs to (what its CSRF token and its
    /// live views are counted against).
    pub session: String,
}

pub fn scope_text(scope: &Scope) -> String {
    match scope {
        Scope::All => "all".into(),
        Scope::Team(t) => format!("team:{t}"),
    }
}

fn mac(key: &[u8; 32], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p);
    }
    mac
}

/// The cookie value for a token's scope, valid until `expires` (Unix seconds).
pub fn issue(key: &[u8; 32], scope: &Scope, token_digest: &[u8; 32], expires: u64) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let scope = scope_text(scope);
    let exp = expires.to_string();
    let tag = mac(key, &[b"session", scope.as_bytes(), exp.as_bytes(), token_digest]).finalize().into_bytes();
    format!("v1.{}.{exp}.{}", b64.encode(scope.as_bytes()), b64.encode(tag))
}

/// The principal a cookie value proves, if it is ours, unexpired, and its token still configured.
pub fn verify(key: &[u8; 32], tokens: &ApiTokens, value: &str, now: u64) -> Option<Principal> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = value.split('.');
    let (Some("v1"), Some(scope), Some(exp), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) else { return None };
    let scope = String::from_utf8(b64.decode(scope).ok()?).ok()?;
    let expires: u64 = exp.parse().ok()?;
    if expires <= now {
        return None;
    }
    let tag = b64.decode(tag).ok()?;
    tokens
        .0
        .iter()
        .filter(|(_, p)| scope_text(&p.scope) == scope)
        .find_map(|(digest, p)| mac(key, &[b"session", scope.as_bytes(), exp.as_bytes(), digest]).verify_slice(&tag).ok().map(|_| p.clone()))
}

/// The CSRF token of a session (or of the open console).
pub fn csrf(key: &[u8; 32], session: &str) -> String {
    hex::encode(mac(key, &[b"csrf", session.as_bytes()]).finalize().into_bytes())
}

pub fn csrf_matches(key: &[u8; 32], session: &str, given: &str) -> bool {
    let Ok(given) = hex::decode(given) else { return false };
    mac(key, &[b"csrf", session.as_bytes()]).verify_slice(&given).is_ok()
}

/// The session cookie's value in a request.
/// Every session cookie the request carries. A browser sends several of one
/// name when a page elsewhere on the domain set its own (another path, a
/// sibling subdomain): each is judged, never just the first.
pub fn cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .take(16)
        .collect()
}

/// The one valid session among the cookies: `None` when none verifies, or
/// when two valid ones disagree (someone set one beside the person's own;
/// which was meant cannot be told, so neither is used and they sign in again).
fn session_cookie(key: &[u8; 32], tokens: &ApiTokens, headers: &HeaderMap, now: u64) -> Option<(String, Principal)> {
    let mut found: Option<(String, Principal)> = None;
    for value in cookies(headers) {
        let Some(p) = verify(key, tokens, &value, now) else { continue };
        match &found {
            Some((v, _)) if *v != value => return None,
            _ => found = Some((value, p)),
        }
    }
    found
}

/// Who the request is from when it sends no bearer token: a session cookie,
/// or (no tokens configured, loopback only) anyone. `None`: sign in first.
pub fn viewer(key: &[u8; 32], tokens: &ApiTokens, headers: &HeaderMap, now: u64) -> Option<Viewer> {
    if tokens.is_open() {
        return Some(Viewer { principal: Principal::admin(), csrf: csrf(key, "open"), signed_in: false, session: "open".into() });
    }
    let (value, principal) = session_cookie(key, tokens, headers, now)?;
    Some(Viewer { principal, csrf: csrf(key, &value), signed_in: true, session: value })
}

/// The viewer a bearer token is (`principal`, resolved by the server's
/// access layer): a script's or `curl`'s request, with no cookie.
pub fn bearer_viewer(key: &[u8; 32], principal: Principal, authorization: &[u8]) -> Viewer {
    let session = format!("bearer:{}", hex::encode(Sha256::digest(authorization)));
    Viewer { principal, csrf: csrf(key, &session), signed_in: false, session }
}

/// Whether a POST comes from a page of this server: browsers say where a
/// request comes from (`Sec-Fetch-Site`, `Origin`); a request that says it is
/// cross-site is refused whatever else it carries.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => true,
        Some(Ok(origin)) => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
            let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
            !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
        }
        Some(Err(_)) => false,
    }
}
