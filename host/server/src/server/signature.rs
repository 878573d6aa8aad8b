//! Webhook signatures: who sent a request, and that it was not sent before.
//!
//! Each trigger names its sender's scheme ([`SignatureScheme`]). Every scheme
//! is an HMAC-SHA256 checked in constant time; the timestamped ones (warden's
//! own, Slack, Stripe) refuse a timestamp outside the trigger's tolerance, and
//! warden's also binds the story, so a body signed for one story is refused by
//! another. A request seen before within the window is refused as a replay
//! ([`ReplayCache`]); GitHub's, which carry no timestamp, by their delivery id.

use crate::policy::triggers::SignatureScheme;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// The header of warden's own scheme (and of the body-only one).
pub const WARDEN_HEADER: &str = "x-warden-signature";

/// Why a request is refused (answered 401, or 409 for a replay).
#[derive(Debug, Clone, PartialEq)]
pub enum Rejected {
    Unsigned(String),
    Invalid(String),
    Replayed,
}

/// A verified request: what identifies it for the replay cache, and until when.
#[derive(Debug)]
pub struct Verified {
    pub replay_key: String,
    pub remember_until: i64,
}

fn mac(secret: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m
}

/// The MAC's bytes when `hex_sig` is the HMAC of `parts` (constant time).
/// The replay key is made from these bytes, never from the header's text:
/// hex in upper or mixed case and spaces around it spell the same MAC, and
/// must be judged the same request.
fn matching(secret: &[u8], parts: &[&[u8]], hex_sig: &str) -> Option<Vec<u8>> {
    let sig = hex::decode(hex_sig.trim()).ok()?;
    mac(secret, parts).verify_slice(&sig).is_ok().then_some(sig)
}

/// A replay key: the scheme and the MAC's bytes in one canonical spelling.
fn key(scheme: &str, mac: &[u8]) -> String {
    format!("{scheme}:{}", hex::encode(mac))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `t=…,v1=…,v1=…` → (t, [v1…]).
fn stamped(value: &str) -> (Option<&str>, Vec<&str>) {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => v1.push(v),
            _ => {}
        }
    }
    (t, v1)
}

/// Checks the timestamp against `now` within `tolerance` seconds.
fn fresh(ts: Option<&str>, now: i64, tolerance: u64) -> Result<i64, Rejected> {
    let ts: i64 = ts.and_then(|t| t.trim().parse().ok()).ok_or_else(|| Rejected::Invalid("the signature has no unix timestamp".into()))?;
    if now.abs_diff(ts) > tolerance {
        return Err(Rejected::Invalid(format!(
            "the signature's timestamp is {}s from the server's clock; at most {tolerance}s is accepted (a replay, or a clock to fix)",
            now.abs_diff(ts)
        )));
    }
    Ok(ts)
}

/// Verifies a webhook request for `story` signed with `secret` under `scheme`.
pub fn verify(scheme: SignatureScheme, secret: &[u8], story: &str, headers: &HeaderMap, body: &[u8], now: i64, tolerance: u64) -> Result<Verified, Rejected> {
    let tol = tolerance as i64;
    let wrong = || Rejected::Invalid("signature does not match the body".into());
    match scheme {
        SignatureScheme::Warden => {
            let value = header(headers, WARDEN_HEADER)
                .ok_or_else(|| Rejected::Unsigned(format!("missing {WARDEN_HEADER}: t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<story>.<body>\">")))?;
            let (t, v1) = stamped(value);
            let ts = fresh(t, now, tolerance)?;
            let t = ts.to_string();
            let sig = v1.into_iter().find_map(|s| matching(secret, &[t.as_bytes(), b".", story.as_bytes(), b".", body], s)).ok_or_else(wrong)?;
            Ok(Verified { replay_key: key("warden", &sig), remember_until: ts + tol })
        }
        SignatureScheme::Stripe => {
            let value = header(headers, "stripe-signature").ok_or_else(|| Rejected::Unsigned("missing Stripe-Signature: t=…,v1=…".into()))?;
            let (t, v1) = stamped(value);
            let ts = fresh(t, now, tolerance)?;
            let t = ts.to_string();
            let sig = v1.into_iter().find_map(|s| matching(secret, &[t.as_bytes(), b".", body], s)).ok_or_else(wrong)?;
            Ok(Verified { replay_key: key("stripe", &sig), remember_until: ts + tol })
        }
        SignatureScheme::Slack => {
            let value = header(headers, "x-slack-signature").ok_or_else(|| Rejected::Unsigned("missing X-Slack-Signature: v0=…".into()))?;
            let ts = fresh(header(headers, "x-slack-request-timestamp"), now, tolerance)?;
            let t = ts.to_string();
            let sig = value.trim().strip_prefix("v0=").and_then(|s| matching(secret, &[b"v0:", t.as_bytes(), b":", body], s)).ok_or_else(wrong)?;
            Ok(Verified { replay_key: key("slack", &sig), remember_until: ts + tol })
        }
        SignatureScheme::GitHub => {
            let value = header(headers, "x-hub-signature-256").ok_or_else(|| Rejected::Unsigned("missing X-Hub-Signature-256: sha256=…".into()))?;
            let sig = value.trim().strip_prefix("sha256=").and_then(|s| matching(secret, &[body], s)).ok_or_else(wrong)?;
            // No timestamp, and the delivery id is not signed (anyone
            // replaying may change it): the signed body is the event, and
            // one seen twice within a day is one event.
            Ok(Verified { replay_key: key("github", &sig), remember_until: now + 86_400 })
        }
        SignatureScheme::BodyOnly => {
            let value =
                header(headers, WARDEN_HEADER).ok_or_else(|| Rejected::Unsigned(format!("missing {WARDEN_HEADER}: sha256=<hex HMAC-SHA256 of the body>")))?;
            let sig = value.trim().strip_prefix("sha256=").and_then(|s| matching(secret, &[body], s)).ok_or_else(wrong)?;
            Ok(Verified { replay_key: key("body", &sig), remember_until: now + tol })
        }
    }
}

/// Signs a body the way warden's scheme wants it, at unix time `ts`: the
/// `X-Warden-Signature` value (for tests, docs and the README's curl line).
pub fn sign_at(secret: &[u8], story: &str, body: &[u8], ts: i64) -> String {
    let t = ts.to_string();
    let sig = mac(secret, &[t.as_bytes(), b".", story.as_bytes(), b".", body]).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(sig))
}

/// Requests seen recently, per story, each kept until its window closes.
/// Bounded: past [`ReplayCache::CAPACITY`] entries the oldest go first.
#[derive(Default)]
pub struct ReplayCache {
    seen: Mutex<Seen>,
}

/// Each request seen (story, key) with when it expires, and the same in expiry order.
type Seen = (HashMap<(String, String), i64>, VecDeque<(i64, String, String)>);

impl ReplayCache {
    pub const CAPACITY: usize = 200_000;

    /// Records the request; `Err(Replayed)` if it was seen before and is still remembered.
    pub fn first_time(&self, story: &str, v: &Verified, now: i64) -> Result<(), Rejected> {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        while let Some((until, s, k)) = order.front() {
            if *until >= now && map.len() < Self::CAPACITY {
                break;
            }
            // Only if the map still holds this entry, not a later one of the same request.
            let key = (s.clone(), k.clone());
            if map.get(&key) == Some(until) {
                map.remove(&key);
            }
            order.pop_front();
        }
        let key = (story.to_string(), v.replay_key.clone());
        if map.get(&key).is_some_and(|until| *until >= now) {
            return Err(Rejected::Replayed);
        }
        map.insert(key, v.remember_until);
        order.push_back((v.remember_until, story.to_string(), v.replay_key.clone()));
        Ok(())
    }

    /// Forgets a request that started no run, so its sender may retry it.
    pub fn forget(&self, story: &str, v: &Verified) {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.remove(&(story.to_string(), v.replay_key.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const NOW: i64 = 1_800_000_000;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn hmac_hex(parts: &[&[u8]]) -> String {
        hex::encode(mac(b"k", parts).finalize().into_bytes())
    }

    #[test]
    fn a_warden_signature_binds_the_story_and_the_time() {
        let h = headers(&[(WARDEN_HEADER, sign_at(b"k", "hunt", b"{}", NOW))]);
        assert!(verify(SignatureScheme::Warden, b"k", "hunt", &h, b"{}", NOW + 10, 300).is_ok());
        assert!(matches!(verify(SignatureScheme::Warden, b"k", "other-story", &h, b"{}", NOW, 300), Err(Rejected::Invalid(_))), "signed for another story");
        assert!(matches!(verify(SignatureScheme::Warden, b"k", "hunt", &h, b"{\"a\":1}", NOW, 300), Err(Rejected::Invalid(_))), "another body");
        let stale = verify(SignatureScheme::Warden, b"k", "hunt", &h, b"{}", NOW + 301, 300).unwrap_err();
        assert!(matches!(&stale, Rejected::Invalid(m) if m.contains("301s from the server's clock")), "{stale:?}");
        let legacy = headers(&[(WARDEN_HEADER, format!("sha256={}", hmac_hex(&[b"{}"])))]);
        assert!(verify(SignatureScheme::Warden, b"k", "hunt", &legacy, b"{}", NOW, 300).is_err(), "the replayable body-only form is not accepted by default");
        assert!(verify(SignatureScheme::BodyOnly, b"k", "hunt", &legacy, b"{}", NOW, 300).is_ok());
    }

    #[test]
    fn github_slack_and_stripe_signatures_verify_their_own_way() {
        let body = b"{\"x\":1}";
        let gh = headers(&[("x-hub-signature-256", format!("sha256={}", hmac_hex(&[body]))), ("x-github-delivery", "d-1".into())]);
        let first = verify(SignatureScheme::GitHub, b"k", "s", &gh, body, NOW, 300).unwrap().replay_key;
        let again = headers(&[("x-hub-signature-256", format!("sha256={}", hmac_hex(&[body]))), ("x-github-delivery", "d-2".into())]);
        assert_eq!(
            verify(SignatureScheme::GitHub, b"k", "s", &again, body, NOW, 300).unwrap().replay_key,
            first,
            "the delivery id is not signed: the same body is the same event"
        );
        assert!(verify(SignatureScheme::GitHub, b"other", "s", &gh, body, NOW, 300).is_err());
        let t = NOW.to_string();
        let slack =
            headers(&[("x-slack-signature", format!("v0={}", hmac_hex(&[b"v0:", t.as_bytes(), b":", body]))), ("x-slack-request-timestamp", t.clone())]);
        assert!(verify(SignatureScheme::Slack, b"k", "s", &slack, body, NOW, 300).is_ok());
        assert!(verify(SignatureScheme::Slack, b"k", "s", &slack, body, NOW + 1000, 300).is_err());
        let stripe = headers(&[("stripe-signature", format!("t={t},v1=00ff,v1={}", hmac_hex(&[t.as_bytes(), b".", body])))]);
        assert!(verify(SignatureScheme::Stripe, b"k", "s", &stripe, body, NOW, 300).is_ok(), "any v1 may match");
        assert!(matches!(verify(SignatureScheme::Stripe, b"k", "s", &HeaderMap::new(), body, NOW, 300), Err(Rejected::Unsigned(_))));
    }

    #[test]
    fn a_request_is_accepted_once_within_its_window() {
        let cache = ReplayCache::default();
        let v = Verified { replay_key: "warden:ab".into(), remember_until: NOW + 300 };
        assert!(cache.first_time("hunt", &v, NOW).is_ok());
        assert_eq!(cache.first_time("hunt", &v, NOW + 5), Err(Rejected::Replayed));
        assert!(cache.first_time("other", &v, NOW + 5).is_ok(), "per story");
        assert!(cache.first_time("hunt", &v, NOW + 301).is_ok(), "forgotten once its timestamp would be refused anyway");
    }

    #[test]
    fn every_spelling_of_one_signature_is_one_replay_key() {
        let body = b"{}";
        let signed = sign_at(b"k", "hunt", body, NOW);
        let (t, sig) = signed.split_once(",v1=").unwrap();
        let mut one_letter = sig.to_string();
        let at = one_letter.find(|c: char| c.is_ascii_alphabetic()).unwrap();
        one_letter.replace_range(at..at + 1, &one_letter[at..at + 1].to_ascii_uppercase());
        let spellings = [
            signed.clone(),
            format!("{t},v1={}", sig.to_ascii_uppercase()),
            format!("{t},v1={one_letter}"),
            format!("{t},v1= {sig}"),
            format!("{t}, v1={sig} "),
        ];
        let keys: Vec<String> = spellings
            .iter()
            .map(|v| verify(SignatureScheme::Warden, b"k", "hunt", &headers(&[(WARDEN_HEADER, v.clone())]), body, NOW, 300).unwrap().replay_key)
            .collect();
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        let cache = ReplayCache::default();
        let accepted = spellings
            .iter()
            .filter(|v| {
                cache
                    .first_time(
                        "hunt",
                        &verify(SignatureScheme::Warden, b"k", "hunt", &headers(&[(WARDEN_HEADER, (*v).clone())]), body, NOW, 300).unwrap(),
                        NOW,
                    )
                    .is_ok()
            })
            .count();
        assert_eq!(accepted, 1, "one request, however its signature is spelt, starts one run");
        // The same for the body-only, Stripe, Slack and GitHub forms.
        let h = hmac_hex(&[body]);
        let body_only = |v: String| verify(SignatureScheme::BodyOnly, b"k", "s", &headers(&[(WARDEN_HEADER, v)]), body, NOW, 300).unwrap().replay_key;
        assert_eq!(body_only(format!("sha256={h}")), body_only(format!("sha256={}", h.to_ascii_uppercase())));
        let gh = |v: String| verify(SignatureScheme::GitHub, b"k", "s", &headers(&[("x-hub-signature-256", v)]), body, NOW, 300).unwrap().replay_key;
        assert_eq!(gh(format!("sha256={h}")), gh(format!("sha256={}", h.to_ascii_uppercase())));
        let ts = NOW.to_string();
        let sl = hmac_hex(&[b"v0:", ts.as_bytes(), b":", body]);
        let slack = |v: String| {
            verify(SignatureScheme::Slack, b"k", "s", &headers(&[("x-slack-signature", v), ("x-slack-request-timestamp", ts.clone())]), body, NOW, 300)
                .unwrap()
                .replay_key
        };
        assert_eq!(slack(format!("v0={sl}")), slack(format!("v0={}", sl.to_ascii_uppercase())));
        let st = hmac_hex(&[ts.as_bytes(), b".", body]);
        let stripe = |v: String| verify(SignatureScheme::Stripe, b"k", "s", &headers(&[("stripe-signature", v)]), body, NOW, 300).unwrap().replay_key;
        assert_eq!(stripe(format!("t={ts},v1={st}")), stripe(format!("t={ts},v1={}", st.to_ascii_uppercase())));
    }
}
