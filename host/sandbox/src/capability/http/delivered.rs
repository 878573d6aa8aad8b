//! What an HTTP request gives back to the guest, whichever door it came
//! through: complete, capped and scrubbed (see [`super::deliver`]).

/// A response as the guest may see it.
pub struct Delivered {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}
