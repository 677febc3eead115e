//! Close codes and ERROR codes of SPEC §3, in one place so that the metrics labels,
//! the protocol and the tests agree on the numbers.

/// A WebSocket close code the gateway sends (or records for metrics).
pub type CloseCode = u16;

pub const NORMAL: CloseCode = 1000;
pub const GOING_AWAY: CloseCode = 1001;
pub const PROTOCOL_ERROR: CloseCode = 1002;
pub const NO_STATUS: CloseCode = 1005;
/// Recorded (never sent) when the peer vanished without a close frame.
pub const ABNORMAL: CloseCode = 1006;
pub const TOO_BIG: CloseCode = 1009;
pub const NOT_JSON: CloseCode = 4002;
pub const NOT_AUTHENTICATED: CloseCode = 4003;
pub const AUTH_FAILED: CloseCode = 4004;
pub const ALREADY_AUTHENTICATED: CloseCode = 4005;
pub const RATE_LIMITED: CloseCode = 4008;
pub const TIMEOUT: CloseCode = 4009;
pub const SLOW_CONSUMER: CloseCode = 4010;
pub const DRAINING: CloseCode = 4011;

/// Every code the metrics keep a counter for; anything else is counted as "other".
pub const TRACKED: [CloseCode; 15] = [
    NORMAL,
    GOING_AWAY,
    PROTOCOL_ERROR,
    NO_STATUS,
    ABNORMAL,
    TOO_BIG,
    1007,
    NOT_JSON,
    NOT_AUTHENTICATED,
    AUTH_FAILED,
    ALREADY_AUTHENTICATED,
    RATE_LIMITED,
    TIMEOUT,
    SLOW_CONSUMER,
    DRAINING,
];

/// Index of `code` in [`TRACKED`], or `TRACKED.len()` for "other".
pub fn tracked_index(code: CloseCode) -> usize {
    TRACKED
        .iter()
        .position(|c| *c == code)
        .unwrap_or(TRACKED.len())
}

/// Short human reason sent in the close frame.
pub fn reason(code: CloseCode) -> &'static str {
    match code {
        TOO_BIG => "frame too big",
        NOT_JSON => "not JSON",
        NOT_AUTHENTICATED => "not authenticated",
        AUTH_FAILED => "authentication failed",
        ALREADY_AUTHENTICATED => "already authenticated",
        RATE_LIMITED => "rate limited",
        TIMEOUT => "timeout",
        SLOW_CONSUMER => "slow consumer",
        DRAINING => "node draining, reconnect",
        PROTOCOL_ERROR => "protocol error",
        _ => "",
    }
}

/// `ERROR {code}` values: SCREAMING_SNAKE strings (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadPayload,
    UnknownType,
    Forbidden,
    InvalidChannel,
    TooManySubscriptions,
    RateLimited,
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
        }
    }
}
