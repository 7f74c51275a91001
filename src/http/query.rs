//! The query parameters of Go's pprof endpoints that heapwatch serves: `seconds` (a CPU
//! profile's length, or a heap delta's window) and `debug` (`1`: the legacy text format).
//! A value heapwatch cannot honour is refused with 400 and a body that says why, rather than
//! replaced by a default (Go takes 30 s for `seconds=abc`): a scraper misconfigured should
//! hear so. Parameters heapwatch does not know are ignored, as Go ignores them (`gc=1` asks
//! Go to collect garbage first; Rust has none to collect).

/// The longest `seconds` accepted: 2 minutes, four times Go's default of 30 s and beyond any
/// scraper's interval, so a request cannot hold a worker for long.
pub(crate) const MAX_SECONDS: u64 = 120;

/// The parameters of one request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PprofQuery {
    /// `seconds=N`, 1 to [`MAX_SECONDS`].
    pub(crate) seconds: Option<u64>,
    /// `debug=N`, 0 to 2 (Go's heap page writes text for any value above 0).
    pub(crate) debug: u8,
}

/// Parses the part of a request target after `?` (without any `#fragment`).
///
/// # Errors
/// The body of a 400 answer: which parameter, what was given (shortened), what is accepted.
pub(crate) fn parse(query: &str) -> Result<PprofQuery, String> {
    let mut parsed = PprofQuery::default();
    let (mut seen_seconds, mut seen_debug) = (false, false);
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "seconds" => {
                if std::mem::replace(&mut seen_seconds, true) {
                    return Err("seconds is given twice; give it once".to_owned());
                }
                match digits(value).and_then(|v| v.parse::<u64>().ok()) {
                    Some(seconds @ 1..=MAX_SECONDS) => parsed.seconds = Some(seconds),
                    _ => {
                        return Err(format!(
                            "seconds={} is not accepted: a whole number of seconds from 1 to {MAX_SECONDS}",
                            shortened(value)
                        ))
                    }
                }
            }
            "debug" => {
                if std::mem::replace(&mut seen_debug, true) {
                    return Err("debug is given twice; give it once".to_owned());
                }
                match digits(value).and_then(|v| v.parse::<u8>().ok()) {
                    Some(debug @ 0..=2) => parsed.debug = debug,
                    _ => {
                        return Err(format!(
                            "debug={} is not accepted: 0 (pprof protobuf) or 1 (Go's legacy text)",
                            shortened(value)
                        ))
                    }
                }
            }
            _ => {}
        }
    }
    Ok(parsed)
}

/// `value` if it is a whole number written with digits only: Rust's integer parsing also takes
/// a leading `+`, which the documents do not promise and Go refuses.
fn digits(value: &str) -> Option<&str> {
    (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())).then_some(value)
}

/// At most 32 characters of a client's value, for an error message.
fn shortened(value: &str) -> String {
    let mut short: String = value.chars().take(32).collect();
    if short.len() < value.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_accepted_and_refused() {
        assert_eq!(parse(""), Ok(PprofQuery::default()));
        assert_eq!(
            parse("seconds=5&gc=1&other"),
            Ok(PprofQuery {
                seconds: Some(5),
                debug: 0
            })
        );
        assert_eq!(parse("debug=1").map(|q| q.debug), Ok(1));
        assert_eq!(parse("seconds=120").map(|q| q.seconds), Ok(Some(120)));
        for bad in [
            "seconds=0",
            "seconds=-1",
            "seconds=1e9",
            "seconds=abc",
            "seconds=",
            "seconds",
            "seconds=121",
            "seconds=99999999999999999999999999",
            "seconds=5&seconds=6",
            "seconds=%35",
            "seconds=5.0",
            "seconds=+5",
            "seconds= 5",
            "seconds=5%20",
            "debug=+1",
            "debug=3",
            "debug=x",
            "debug=1&debug=1",
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(
                error.contains("seconds") || error.contains("debug"),
                "{bad}: {error}"
            );
        }
        let long = format!("seconds={}", "9".repeat(1000));
        assert!(
            parse(&long).unwrap_err().len() < 120,
            "the value is shortened"
        );
    }
}
