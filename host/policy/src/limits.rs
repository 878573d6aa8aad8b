//! Resource limits of one invocation, set per grant in the policy.
//!
//! Every limit has a default so that a grant without `limits` is still bounded.

use serde::Deserialize;
use std::fmt;

/// What one invocation may consume. The host enforces each of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory, in bytes (all memories of the component together).
    pub memory_bytes: u64,
    /// CPU time spent executing guest code, in milliseconds (epoch-measured).
    pub cpu_ms: u64,
    /// Wall-clock time of the whole invocation, sleeps and HTTP included.
    pub wall_ms: u64,
    /// Number of `http.send` calls.
    pub http_requests: u32,
    /// Largest request body the guest may send.
    pub request_bytes: u64,
    /// Largest response body the host reads for the guest (never buffered past it).
    pub response_bytes: u64,
    /// Bytes of log text kept (log calls plus captured stdout/stderr).
    pub log_bytes: u64,
    /// Largest output JSON `run` may return.
    pub output_bytes: u64,
    /// Refused capability calls before the host stops the invocation: a guest
    /// probing the policy gets a few answers, not an unbounded supply.
    pub denials: u32,
    /// Bytes of capability calls and WASI reads a recording of one invocation
    /// keeps (`warden action run --record`); past it the recording is marked
    /// truncated.
    pub recording_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 * MIB,
            cpu_ms: 2_000,
            wall_ms: 60_000,
            http_requests: 100,
            request_bytes: MIB,
            response_bytes: 4 * MIB,
            log_bytes: 64 * KIB,
            output_bytes: 4 * MIB,
            denials: 32,
            recording_bytes: 8 * MIB,
        }
    }
}

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * 1024 * 1024;

/// The most linear memory any grant may give; the pooling allocator reserves
/// slots of this size, so it is an engine setting as well as a policy bound.
pub const MAX_MEMORY_BYTES: u64 = GIB;

/// A size in a policy file: a number of bytes or a string like `"32MiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    pub fn to_bytes(&self) -> Result<u64, String> {
        match self {
            SizeValue::Bytes(n) => Ok(*n),
            SizeValue::Text(text) => parse_size(text),
        }
    }
}

/// Parses `"512"`, `"64KiB"`, `"32MiB"`, `"1GiB"` (also `KB`/`MB`/`GB` as powers of 1000).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{text}` is not a size; write bytes or e.g. \"32MiB\""))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => KIB,
        "MiB" => MIB,
        "GiB" => GIB,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown size unit `{other}` in `{text}`; use B, KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size `{text}` is too large"))
}

/// Human form of a byte count, for error messages.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= GIB && n.is_multiple_of(GIB) {
            write!(f, "{} GiB", n / GIB)
        } else if n >= MIB && n.is_multiple_of(MIB) {
            write!(f, "{} MiB", n / MIB)
        } else if n >= KIB && n.is_multiple_of(KIB) {
            write!(f, "{} KiB", n / KIB)
        } else {
            write!(f, "{n} bytes")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        assert_eq!(parse_size("32MiB").unwrap(), 32 * MIB);
        assert_eq!(parse_size("1GiB").unwrap(), GIB);
        assert_eq!(parse_size("64KiB").unwrap(), 64 * KIB);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("512").unwrap(), 512);
    }

    #[test]
    fn sizes_reject_unknown_units_and_garbage() {
        assert!(parse_size("32 mebibytes").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999GiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn bytes_display_picks_the_exact_unit() {
        assert_eq!(Bytes(32 * MIB).to_string(), "32 MiB");
        assert_eq!(Bytes(1500).to_string(), "1500 bytes");
    }
}
