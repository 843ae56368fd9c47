//! What every hiber crate shares, once: durable all-or-nothing file writes and mount points ([`fs`]), advisory
//! file locks ([`lock`]), the loopback interface ([`net`]), unix time ([`unix_secs`], [`unix_ms`]) and random ids ([`random_id`]).

pub mod fs;
pub mod lock;
pub mod net;
pub mod parallel;

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in seconds since the unix epoch (0 if the clock is before it).
pub fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Now, in milliseconds since the unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A random id of `digits` lowercase hex digits (at most 32).
pub fn random_id(digits: usize) -> String {
    let digits = digits.min(32);
    let hex = format!("{:032x}", rand::random::<u128>());
    hex[32 - digits..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_asked_length_and_differ() {
        let (a, b) = (random_id(12), random_id(12));
        assert_eq!(a.len(), 12);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{a}");
        assert_ne!(a, b);
        assert_eq!(random_id(40).len(), 32);
    }

    #[test]
    fn clocks_agree() {
        let (s, ms) = (unix_secs(), unix_ms());
        assert!(s > 1_600_000_000);
        assert!(ms / 1000 >= s && ms / 1000 <= s + 1);
    }
}
