//! Query strings of kubelet API requests, decoded as upstream's parameter codec does.

/// A query that upstream's parameter codec or validation would refuse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A value did not parse: 400, `{"message": "Unable to decode query."}`.
    #[error("{{\"message\": \"Unable to decode query.\"}}")]
    Decode,
    /// Values parse but break validation: 422, `{"message": "Invalid request."}`.
    #[error("{{\"message\": \"Invalid request.\"}}")]
    Invalid,
}

/// Decodes `%xx` and `+` of one query component.
fn percent_decode(s: &str) -> Result<String, QueryError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(QueryError::Decode)?;
                let hex = std::str::from_utf8(hex).map_err(|_| QueryError::Decode)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| QueryError::Decode)?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| QueryError::Decode)
}

/// The query's `key=value` pairs, decoded, in order.
pub fn query_pairs(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// A boolean parameter as upstream's `Convert_Slice_string_To_bool` reads it: `0` and
/// `false` (any case) are false, anything else, even empty (`?stdin`), is true.
pub fn parse_bool(v: &str) -> bool {
    !(v == "0" || v.eq_ignore_ascii_case("false"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pairs_like_go() {
        assert_eq!(
            query_pairs("command=echo+a%3Db&stdin&x=%E2%9C%93").unwrap(),
            [
                ("command".to_string(), "echo a=b".to_string()),
                ("stdin".to_string(), String::new()),
                ("x".to_string(), "✓".to_string()),
            ]
        );
        assert_eq!(query_pairs("a=%zz"), Err(QueryError::Decode));
        assert_eq!(query_pairs("a=%4"), Err(QueryError::Decode));
        assert!(parse_bool("True") && parse_bool("") && parse_bool("1"));
        assert!(!parse_bool("0") && !parse_bool("FALSE"));
    }
}
