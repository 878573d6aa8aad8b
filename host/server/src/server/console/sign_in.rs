//! Signing in with an API token and out again; the CSRF check every console POST passes.

use super::*;
use crate::store::Activity;

pub(super) async fn login_page(State(s): State<AppState>) -> Response {
    if s.tokens.is_open() {
        return Redirect::to("/console/runs").into_response();
    }
    page(StatusCode::OK, "login.html", context! { nav => false, failed => false })
}

pub(super) async fn login(State(s): State<AppState>, ext: axum::http::Extensions, headers: HeaderMap, body: Bytes) -> Response {
    if !session::same_origin(&headers) {
        return said(StatusCode::FORBIDDEN, "Refused", "This form was not sent from this console.");
    }
    // Guessing tokens is slowed down per address (behind a proxy, the proxy's).
    let from = ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip()).unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let now = now_ms() / 1000;
    if !s.console.may_sign_in(from, now) {
        return said(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed sign-ins",
            &format!("{MAX_FAILED_SIGN_INS} tokens from this address were wrong; try again in {} minutes.", SIGN_IN_WINDOW_SECS / 60),
        );
    }
    let key = match s.console.key(&s) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let token = url::form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.trim().to_string()).unwrap_or_default();
    let Some((principal, digest)) = s.tokens.find(&token) else {
        s.console.failed_sign_in(from, now);
        if crate::server::access::unsigned_entry_allowed(now) {
            let entry = Activity {
                detail: Some("a token not known here".into()),
                from: Some(from.to_string()),
                ..Activity::now("console.sign_in_failed", "unknown", None, "refused")
            };
            crate::server::access::note(&s, entry).await;
        }
        return page(StatusCode::UNAUTHORIZED, "login.html", context! { nav => false, failed => true });
    };
    let value = session::issue(&key, &principal.scope, &digest, now + session::SESSION_SECS);
    let entry = Activity { from: Some(from.to_string()), ..Activity::now("console.sign_in", &principal.name, principal.scope.team(), "ok") };
    crate::server::access::note(&s, entry).await;
    let secure = if s.policy.server.public_url.as_deref().is_some_and(|u| u.starts_with("https://")) { "; Secure" } else { "" };
    let cookie = format!("{}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}", session::COOKIE, session::SESSION_SECS);
    let mut r = Redirect::to("/console/runs").into_response();
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie is ASCII"));
    r
}

pub(super) async fn logout(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let v = match checked_post(&s, &headers, &body).await {
        Ok((v, _)) => v,
        Err(r) => return r,
    };
    crate::server::access::note(&s, Activity::now("console.sign_out", &v.principal.name, v.principal.scope.team(), "ok")).await;
    let mut r = Redirect::to("/console/login").into_response();
    let cookie = format!("{}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0", session::COOKIE);
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie is ASCII"));
    r
}

/// A console form post: same origin, signed in, with the session's CSRF token.
pub(super) async fn checked_post(s: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(Viewer, HashMap<String, String>), Response> {
    if !session::same_origin(headers) {
        return Err(said(StatusCode::FORBIDDEN, "Refused", "This form was not sent from this console."));
    }
    let (v, key) = who(s, headers).await?;
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let given = form.get("csrf").map(String::as_str).unwrap_or("");
    if !session::csrf_matches(&key, &v.session, given) {
        return Err(said(StatusCode::FORBIDDEN, "Refused", "This form has expired or was not sent from this console; reload the page and try again."));
    }
    Ok((v, form))
}
