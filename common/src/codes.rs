//! Close codes and ERROR codes (SPEC §3) as data: one table gives each close code
//! its reason text (the close frame), its metric label (`xcord_connections_closed_total
//! {code}`) and the reconnect advice a client follows (the README's table and the
//! official client are checked against it), so the three cannot disagree.

/// A WebSocket close code.
pub type CloseCode = u16;

pub const NORMAL: CloseCode = 1000;
pub const GOING_AWAY: CloseCode = 1001;
pub const PROTOCOL_ERROR: CloseCode = 1002;
pub const NO_STATUS: CloseCode = 1005;
/// Recorded (never sent) when the peer vanished without a close frame.
pub const ABNORMAL: CloseCode = 1006;
/// Sent by peers for invalid UTF-8 (the gateway closes that 4002).
pub const INVALID_PAYLOAD: CloseCode = 1007;
pub const TOO_BIG: CloseCode = 1009;
pub const NOT_JSON: CloseCode = 4002;
pub const NOT_AUTHENTICATED: CloseCode = 4003;
pub const AUTH_FAILED: CloseCode = 4004;
pub const ALREADY_AUTHENTICATED: CloseCode = 4005;
pub const RATE_LIMITED: CloseCode = 4008;
pub const TIMEOUT: CloseCode = 4009;
pub const SLOW_CONSUMER: CloseCode = 4010;
pub const DRAINING: CloseCode = 4011;

/// What a client does after a close (README "Reconnecting").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconnect {
    /// Full-jitter exponential backoff, then RESUME.
    Backoff,
    /// At once, with a small jitter (a drain spreads its closes), then RESUME.
    AtOnce,
    /// Only with a new token (never the same one again).
    NewToken,
    /// Not automatically: the client (or its user) must change something.
    Never,
    /// Nothing to do: the client itself closed.
    Done,
}

impl Reconnect {
    pub fn advice(self) -> &'static str {
        match self {
            Reconnect::Backoff => "reconnect with full-jitter backoff, then RESUME",
            Reconnect::AtOnce => "reconnect at once (small jitter), then RESUME",
            Reconnect::NewToken => "get a new token first; never retry the same one",
            Reconnect::Never => "do not reconnect automatically (a client bug)",
            Reconnect::Done => "nothing to do (the client closed)",
        }
    }
}

/// One close code and everything that follows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    pub code: CloseCode,
    /// The reason text of the close frame the gateway sends ("" when it never sends it).
    pub reason: &'static str,
    /// What it means, for people.
    pub meaning: &'static str,
    pub reconnect: Reconnect,
}

/// Every close code the gateway sends or records. Its order is the order of the
/// per-code counters; anything else is counted as `other`.
pub const TABLE: [Close; 15] = [
    Close {
        code: NORMAL,
        reason: "",
        meaning: "normal close (by the client)",
        reconnect: Reconnect::Done,
    },
    Close {
        code: GOING_AWAY,
        reason: "",
        meaning: "the peer is going away",
        reconnect: Reconnect::Backoff,
    },
    Close {
        code: PROTOCOL_ERROR,
        reason: "protocol error",
        meaning: "a WebSocket protocol violation",
        reconnect: Reconnect::Never,
    },
    Close {
        code: NO_STATUS,
        reason: "",
        meaning: "a close frame without a code",
        reconnect: Reconnect::Backoff,
    },
    Close {
        code: ABNORMAL,
        reason: "",
        meaning: "the connection dropped without a close frame",
        reconnect: Reconnect::Backoff,
    },
    Close {
        code: INVALID_PAYLOAD,
        reason: "",
        meaning: "the peer received invalid data",
        reconnect: Reconnect::Backoff,
    },
    Close {
        code: TOO_BIG,
        reason: "frame too big",
        meaning: "a client message over --max-message-size",
        reconnect: Reconnect::Never,
    },
    Close {
        code: NOT_JSON,
        reason: "not JSON",
        meaning: "not JSON, a binary frame, or invalid UTF-8",
        reconnect: Reconnect::Never,
    },
    Close {
        code: NOT_AUTHENTICATED,
        reason: "not authenticated",
        meaning: "a command before HELLO",
        reconnect: Reconnect::Never,
    },
    Close {
        code: AUTH_FAILED,
        reason: "authentication failed",
        meaning: "bad, expired or not-yet-valid token",
        reconnect: Reconnect::NewToken,
    },
    Close {
        code: ALREADY_AUTHENTICATED,
        reason: "already authenticated",
        meaning: "a second HELLO",
        reconnect: Reconnect::Never,
    },
    Close {
        code: RATE_LIMITED,
        reason: "rate limited",
        meaning: "twice the command rate limit",
        reconnect: Reconnect::Backoff,
    },
    Close {
        code: TIMEOUT,
        reason: "timeout",
        meaning: "no HELLO in time, or no frame for 2x the heartbeat",
        reconnect: Reconnect::Backoff,
    },
    Close {
        code: SLOW_CONSUMER,
        reason: "slow consumer",
        meaning: "the send queue passed --send-queue-bytes",
        reconnect: Reconnect::Backoff,
    },
    Close {
        code: DRAINING,
        reason: "node draining, reconnect",
        meaning: "the node is shutting down",
        reconnect: Reconnect::AtOnce,
    },
];

/// Index of `code` in [`TABLE`], or `TABLE.len()` for "other".
pub fn index(code: CloseCode) -> usize {
    TABLE
        .iter()
        .position(|c| c.code == code)
        .unwrap_or(TABLE.len())
}

/// The table row of `code`.
pub fn close(code: CloseCode) -> Option<&'static Close> {
    TABLE.iter().find(|c| c.code == code)
}

/// Short human reason sent in the close frame.
pub fn reason(code: CloseCode) -> &'static str {
    close(code).map_or("", |c| c.reason)
}

/// The README's reconnect table, generated from [`TABLE`] (a test keeps the README
/// equal to it).
pub fn reconnect_table_markdown() -> String {
    let mut s = String::from("| code | meaning | what a client does |\n| --- | --- | --- |\n");
    for c in TABLE.iter() {
        s.push_str(&format!(
            "| {} | {} | {} |\n",
            c.code,
            c.meaning,
            c.reconnect.advice()
        ));
    }
    s
}

/// `ERROR {code}` values: SCREAMING_SNAKE strings (SPEC §3, §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadPayload,
    UnknownType,
    Forbidden,
    InvalidChannel,
    TooManySubscriptions,
    RateLimited,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadPayload => "BAD_PAYLOAD",
            ErrorCode::UnknownType => "UNKNOWN_TYPE",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::InvalidChannel => "INVALID_CHANNEL",
            ErrorCode::TooManySubscriptions => "TOO_MANY_SUBSCRIPTIONS",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_indexed() {
        for (i, c) in TABLE.iter().enumerate() {
            assert_eq!(index(c.code), i);
        }
        assert_eq!(index(3000), TABLE.len());
        assert_eq!(reason(SLOW_CONSUMER), "slow consumer");
        assert_eq!(reason(3000), "");
        assert!(TABLE.iter().all(|c| c.reason.len() <= 123));
    }

    #[test]
    fn the_advice_follows_the_readme_rules() {
        let r = |c| close(c).map(|c| c.reconnect);
        assert_eq!(r(AUTH_FAILED), Some(Reconnect::NewToken));
        assert_eq!(r(DRAINING), Some(Reconnect::AtOnce));
        for c in [NOT_AUTHENTICATED, ALREADY_AUTHENTICATED] {
            assert_eq!(r(c), Some(Reconnect::Never));
        }
        for c in [RATE_LIMITED, SLOW_CONSUMER, ABNORMAL, GOING_AWAY] {
            assert_eq!(r(c), Some(Reconnect::Backoff));
        }
        assert!(reconnect_table_markdown().contains("| 4011 |"));
    }
}
