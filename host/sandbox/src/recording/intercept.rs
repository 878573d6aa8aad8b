//! The interceptor in front of the capabilities: what makes an invocation
//! live, recorded or replayed, in one place.
//!
//! As Spin's `OutboundHttpInterceptor` sits in front of its outbound HTTP,
//! every capability (HTTP on both doors, SMTP, the clock) asks the [`Tape`]
//! before it judges or makes a call, and hands it the call it made:
//!
//! - live: [`Tape::intercept`] says [`Intercepted::Proceed`] and keeps nothing;
//! - recording: `Proceed`, and [`Made`] keeps the call as the guest saw it
//!   (before the capability returns, so a call that ends the invocation —
//!   past `limits.denials` — is on the recording as it was live);
//! - replaying: [`Intercepted::Answered`] with the recorded answer, compared
//!   field by field with what the guest asked; nothing is judged or sent, and
//!   a difference stops the invocation ([`Tape::divergence`]).
//!
//! The capabilities never name the tape's variants: a new capability is
//! recorded and replayed by asking the same two questions.

use super::{locked, Body, Call, Divergence, HttpAnswerOut, HttpRequest, Replayer, Tape, TapeWriter};
use std::sync::{Arc, Mutex};

/// What the interceptor says about a call the guest asked for.
pub enum Intercepted {
    /// Replaying: the recorded call answers it (or where the replay diverged).
    Answered(Result<Call, Divergence>),
    /// Live or recording: make the call, then hand it to [`Made`].
    Proceed(Made),
}

/// A call being made live; keeps it when recording.
pub struct Made(Option<Arc<Mutex<TapeWriter>>>);

impl Made {
    /// Whether the call will be kept: build a copy for the recording only then.
    pub fn keeps(&self) -> bool {
        self.0.is_some()
    }

    /// Keeps the call made (recording), after the ones kept before it.
    pub fn keep(&self, call: impl FnOnce() -> Call) {
        if let Some(w) = &self.0 {
            locked(w).put(None, call());
        }
    }

    /// Keeps an `http.send` whose request was written as JSON before its
    /// body went on the wire (see [`TapeWriter::put_http`]).
    pub fn keep_http(&self, request: &str, answer: HttpAnswerOut<'_>) {
        if let Some(w) = &self.0 {
            locked(w).put_http(request, answer);
        }
    }

    /// Takes the call's place now, for a call answered later (a wasi:http
    /// request runs beside the guest): the recording keeps the order asked.
    pub fn reserve(self) -> Reserved {
        Reserved(self.0.map(|w| {
            let slot = locked(&w).reserve();
            (w, slot)
        }))
    }
}

/// A call's place on the recording, taken when it was asked.
pub struct Reserved(Option<(Arc<Mutex<TapeWriter>>, Option<usize>)>);

impl Reserved {
    /// Whether the call will be kept.
    pub fn keeps(&self) -> bool {
        self.0.is_some()
    }

    /// Fills the place with the call made.
    pub fn keep(self, call: impl FnOnce() -> Call) {
        if let Some((w, slot)) = self.0 {
            locked(&w).put(slot, call());
        }
    }
}

/// A streamed request answered from the recording before its body was read:
/// the body is compared once the guest has written it.
pub struct BodyCheck {
    replayer: Arc<Mutex<Replayer>>,
    /// The call's 1-based position.
    call: usize,
    recorded: Option<Body>,
}

impl BodyCheck {
    /// The body the recording holds for this request.
    pub fn recorded(&self) -> &Option<Body> {
        &self.recorded
    }

    /// Compares the body the guest wrote; a difference is a divergence.
    pub fn check(self, now: &Option<Body>) -> Result<(), Divergence> {
        locked(&self.replayer).check_body(self.call, &self.recorded, now)
    }
}

/// [`Tape::intercept_streamed`]'s answer.
pub enum InterceptedStream {
    /// The recorded answer (boxed: a call is large beside a [`Made`]).
    Answered(Box<Result<Call, Divergence>>, BodyCheck),
    Proceed(Made),
}

impl Tape {
    /// Before a capability judges or makes the call `asked` (built only when
    /// replaying): the recorded answer, or go on.
    pub fn intercept(&self, asked: impl FnOnce() -> Call) -> Intercepted {
        match self {
            Tape::Live => Intercepted::Proceed(Made(None)),
            Tape::Record(w) => Intercepted::Proceed(Made(Some(w.clone()))),
            Tape::Replay(r) => Intercepted::Answered(locked(r).answer(&asked())),
        }
    }

    /// [`Tape::intercept`] for a request whose body is still streaming: its
    /// head is compared now (`asked` is given the recorded body to stand in
    /// for it), its body later through [`BodyCheck`].
    pub fn intercept_streamed(&self, asked: impl FnOnce(Option<Body>) -> HttpRequest) -> InterceptedStream {
        let r = match self {
            Tape::Live => return InterceptedStream::Proceed(Made(None)),
            Tape::Record(w) => return InterceptedStream::Proceed(Made(Some(w.clone()))),
            Tape::Replay(r) => r,
        };
        let mut replayer = locked(r);
        let recorded = match replayer.peek() {
            Some(Call::Http { request, .. }) => request.body.clone(),
            _ => None,
        };
        let request = asked(recorded.clone());
        let answered = replayer.answer(&Call::Http { request, answer: super::HttpAnswer::Error { kind: String::new(), message: String::new() } });
        let call = replayer.answered();
        drop(replayer);
        InterceptedStream::Answered(Box::new(answered), BodyCheck { replayer: r.clone(), call, recorded })
    }

    /// Where a replay diverged, if it did (possibly in a body checked late):
    /// the invocation stops. `None` when not replaying.
    pub fn divergence(&self) -> Option<Divergence> {
        match self {
            Tape::Replay(r) => locked(r).divergence.clone(),
            _ => None,
        }
    }

    /// Whether the invocation meets the world as it is (nothing kept or
    /// answered from a recording): WASI's clocks and randomness are then
    /// the host's own.
    pub fn is_live(&self) -> bool {
        matches!(self, Tape::Live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocation::InvocationInfo;

    fn recorded(calls: impl FnOnce(&Tape)) -> super::super::Recording {
        let tape = Tape::record(1 << 20);
        calls(&tape);
        tape.finish("p", "00", &InvocationInfo::default(), "{}", &Ok("{}".into())).expect("recording")
    }

    fn proceed(i: Intercepted) -> Made {
        match i {
            Intercepted::Proceed(m) => m,
            Intercepted::Answered(_) => panic!("answered where the call should go on"),
        }
    }

    #[test]
    fn a_live_tape_lets_every_call_through_and_keeps_none() {
        let tape = Tape::Live;
        let made = proceed(tape.intercept(|| unreachable!("a live call is not compared")));
        assert!(!made.keeps());
        assert!(tape.divergence().is_none() && tape.is_live());
    }

    #[test]
    fn a_recording_keeps_calls_in_the_order_they_were_asked_even_when_answered_later() {
        let rec = recorded(|tape| {
            let late = proceed(tape.intercept(|| unreachable!())).reserve();
            proceed(tape.intercept(|| unreachable!())).keep(|| Call::Sleep { ms: 5 });
            late.keep(|| Call::Now { ms: 7 });
        });
        assert_eq!(rec.calls, vec![Call::Now { ms: 7 }, Call::Sleep { ms: 5 }]);
    }

    #[test]
    fn a_replay_answers_from_the_recording_and_a_different_call_stops_it() {
        let rec = recorded(|tape| {
            proceed(tape.intercept(|| unreachable!())).keep(|| Call::Now { ms: 42 });
            proceed(tape.intercept(|| unreachable!())).keep(|| Call::Sleep { ms: 10 });
        });
        let tape = Tape::replay(rec).unwrap();
        assert!(matches!(tape.intercept(|| Call::Now { ms: 0 }), Intercepted::Answered(Ok(Call::Now { ms: 42 }))));
        // Asked to sleep 11 ms where the recording slept 10: nothing answers it, and the tape says where.
        assert!(matches!(tape.intercept(|| Call::Sleep { ms: 11 }), Intercepted::Answered(Err(_))));
        let d = tape.divergence().expect("diverged");
        assert_eq!((d.call, d.field.as_str()), (2, "ms"));
        // Every later call is refused with the same divergence.
        assert!(matches!(tape.intercept(|| Call::Now { ms: 0 }), Intercepted::Answered(Err(e)) if e == d));
    }
}
