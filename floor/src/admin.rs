//! The admin listener's HTTP/1.1 (keep-alive): `POST /api/v1/publish` with the
//! gateway's body, `GET /healthz`, `GET /readyz`. Requests are parsed from the
//! connection's buffer; the loop answers them.

/// Largest request body.
pub const MAX_BODY: usize = 1 << 20;

/// One parsed request; `body` is a range of the buffer.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub route: Route,
    /// Whether `Authorization: Bearer` matched `--admin-token` (true without one).
    pub authorized: bool,
    /// The client asked to close after the answer.
    pub close: bool,
    pub body: std::ops::Range<usize>,
    /// Bytes of the whole request.
    pub len: usize,
}

#[derive(Debug, PartialEq, Clone, Copy)]
pub enum Route {
    Publish,
    Health,
    Ready,
    NotFound,
}

/// Parse the request at the start of `buf`: `Ok(None)` while incomplete, `Err`
/// for one that cannot be answered (the connection is closed).
pub fn parse(buf: &[u8], token: Option<&str>) -> Result<Option<Request>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => return Ok(None),
        _ => return Err(()),
    };
    let (mut len, mut bearer, mut close) = (0usize, None, req.version == Some(0));
    for h in req.headers.iter() {
        let v = std::str::from_utf8(h.value).map_err(|_| ())?.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            len = v.parse().map_err(|_| ())?;
        } else if h.name.eq_ignore_ascii_case("authorization") {
            bearer = v.strip_prefix("Bearer ").map(str::trim);
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(()); // chunked bodies: not here
        }
    }
    if len > MAX_BODY {
        return Err(());
    }
    if buf.len() < head + len {
        return Ok(None);
    }
    let path = req.path.unwrap_or("").split('?').next().unwrap_or("");
    let route = match (req.method.unwrap_or(""), path) {
        ("POST", "/api/v1/publish") => Route::Publish,
        ("GET", "/healthz") => Route::Health,
        ("GET", "/readyz") => Route::Ready,
        _ => Route::NotFound,
    };
    let authorized = token.is_none_or(|t| bearer.is_some_and(|b| constant_time_eq(b, t)));
    Ok(Some(Request {
        route,
        authorized,
        close,
        body: head..head + len,
        len: head + len,
    }))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Append an HTTP response with a JSON body to `out`.
pub fn respond(status: u16, body: &str, close: bool, out: &mut Vec<u8>) {
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let conn = if close { "close" } else { "keep-alive" };
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let r = b"POST /api/v1/publish HTTP/1.1\r\nAuthorization: Bearer k\r\nContent-Length: 2\r\n\r\n{}GET";
        assert_eq!(parse(&r[..30], Some("k")), Ok(None));
        let q = parse(r, Some("k")).unwrap().unwrap();
        assert_eq!(
            (q.route, q.authorized, q.close),
            (Route::Publish, true, false)
        );
        assert_eq!(&r[q.body.clone()], b"{}");
        assert_eq!(q.len, r.len() - 3);
        assert!(!parse(r, Some("other")).unwrap().unwrap().authorized);
        assert!(parse(r, None).unwrap().unwrap().authorized);
        let g = parse(b"GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n", None);
        assert_eq!(g.unwrap().unwrap().route, Route::Ready);
    }
}
