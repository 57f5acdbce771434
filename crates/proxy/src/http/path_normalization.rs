//! The HCM's `normalize_path` and `merge_slashes`, as Envoy does them before
//! routing (and forwards upstream): percent-decode unreserved characters,
//! backslash to slash, remove dot segments (RFC 3986 5.2.4); collapse repeated
//! slashes. The query string is left alone.

/// `path_with_escaped_slashes_action`: what to do with `%2F`, `%2f`, `%5C`
/// and `%5c` in the path (never the query).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Leave them (Envoy's default, Istio's unless DECODE_AND_MERGE_SLASHES).
    #[default]
    KeepUnchanged,
    /// 400 when the path has one.
    RejectRequest,
    /// Unescape them, then answer 307 to the normalized path.
    UnescapeAndRedirect,
    /// Unescape them and go on with the normalized path.
    UnescapeAndForward,
}

/// What the connection manager does with a request's path.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Already normal: go on with it as it is.
    Unchanged,
    /// Go on with this path (and query).
    Forward(String),
    /// Answer 307 with this `location`.
    Redirect(String),
    /// Answer 400.
    Reject,
}

/// Envoy's order: unescape slashes (by `escaped`), then `normalize_path`,
/// then `merge_slashes`.
pub fn apply(
    path_and_query: &str,
    normalize_path: bool,
    merge_slashes: bool,
    escaped: EscapedSlashes,
) -> Outcome {
    let unescaped = match escaped {
        EscapedSlashes::KeepUnchanged => None,
        _ => unescape_slashes(path_and_query),
    };
    let redirect = match (&unescaped, escaped) {
        (Some(_), EscapedSlashes::RejectRequest) => return Outcome::Reject,
        (Some(_), EscapedSlashes::UnescapeAndRedirect) => true,
        _ => false,
    };
    let input = unescaped.as_deref().unwrap_or(path_and_query);
    let out = match normalize(input, normalize_path, merge_slashes) {
        Some(n) => n,
        None if unescaped.is_some() => input.to_string(),
        None => return Outcome::Unchanged,
    };
    if redirect {
        Outcome::Redirect(out)
    } else {
        Outcome::Forward(out)
    }
}

/// `%2F`/`%2f` to `/` and `%5C`/`%5c` to `\\` in the path part; None when
/// there are none.
fn unescape_slashes(path_and_query: &str) -> Option<String> {
    let end = path_and_query.find('?').unwrap_or(path_and_query.len());
    let (path, query) = path_and_query.split_at(end);
    let b = path.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i + 2 < b.len() {
        let c = match (b[i], b[i + 1], b[i + 2].to_ascii_uppercase()) {
            (b'%', b'2', b'F') => '/',
            (b'%', b'5', b'C') => '\\',
            _ => {
                i += 1;
                continue;
            }
        };
        let o = out.get_or_insert_with(|| String::with_capacity(path_and_query.len()));
        o.push_str(&path[copied..i]);
        o.push(c);
        i += 3;
        copied = i;
    }
    let mut o = out?;
    o.push_str(&path[copied..]);
    o.push_str(query);
    Some(o)
}

/// The normalized `:path`, or None when it is already normal (the common case,
/// which costs no allocation).
pub fn normalize(
    path_and_query: &str,
    normalize_path: bool,
    merge_slashes: bool,
) -> Option<String> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    let needs_normalize = normalize_path
        && (path.contains('%')
            || path.contains('\\')
            || path.contains("/.")
            || !path.starts_with('/'));
    let needs_merge = merge_slashes && path.contains("//");
    if !needs_normalize && !needs_merge {
        return None;
    }
    let mut out = if needs_normalize {
        remove_dot_segments(&decode_unreserved(path))
    } else {
        path.to_string()
    };
    if merge_slashes {
        let mut merged = String::with_capacity(out.len());
        for c in out.chars() {
            if c == '/' && merged.ends_with('/') {
                continue;
            }
            merged.push(c);
        }
        out = merged;
    }
    out.push_str(query);
    (out != path_and_query).then_some(out)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// `%41` -> `A` for unreserved characters; `\` -> `/`; other escapes kept.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) if is_unreserved(h * 16 + l) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'\\' => out.push(b'/'),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// RFC 3986 section 5.2.4 for an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let body = path.strip_prefix('/').unwrap_or(path);
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let segments: Vec<&str> = body.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                stack.pop();
                trailing_slash = i == last;
            }
            s => {
                stack.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    out.push('/');
    out.push_str(&stack.join("/"));
    if trailing_slash && !out.ends_with('/') {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case checked against Envoy 1.40 with normalize_path and merge_slashes.
    #[test]
    fn matches_envoy() {
        let n = |p: &str| normalize(p, true, true).unwrap_or_else(|| p.to_string());
        assert_eq!(n("//a/./b/../c//d?x=//y"), "/a/c/d?x=//y");
        assert_eq!(n("/a/%2E%2E/b%2Fc/%7Ex"), "/b%2Fc/~x");
        assert_eq!(n("/a\\b"), "/a/b");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("/a/b/..?q=/../"), "/a/?q=/../");
        assert_eq!(n("/%2e/x"), "/x");
        assert_eq!(n("/%2fx%2f"), "/%2fx%2f");
        assert_eq!(n("/a%20b"), "/a%20b");
        assert_eq!(n("/%41"), "/A");
        assert_eq!(normalize("/plain/path?x", true, true), None);
        assert_eq!(normalize("/a//b", true, false), None);
        assert_eq!(normalize("/a//b", false, true).as_deref(), Some("/a/b"));
    }

    #[test]
    fn escaped_slashes() {
        use EscapedSlashes as E;
        let fwd = |p: &str| match apply(p, true, true, E::UnescapeAndForward) {
            Outcome::Forward(p) => p,
            Outcome::Unchanged => p.to_string(),
            o => panic!("{o:?}"),
        };
        // Istio's DECODE_AND_MERGE_SLASHES expectations.
        assert_eq!(fwd("/app/%2f"), "/app/");
        assert_eq!(fwd("/app%2f/"), "/app/");
        assert_eq!(fwd("/%2Fapp%5cadmin%5Cabc"), "/app/admin/abc");
        assert_eq!(
            fwd("/%5Capp%2f%5c%2F%2e%2e%2fadmin%5c\\abc"),
            "/app/admin/abc"
        );
        assert_eq!(fwd("/a%2Fb?x=%2F"), "/a/b?x=%2F");
        assert_eq!(
            apply("/a%2Fb", true, false, E::KeepUnchanged),
            Outcome::Unchanged
        );
        assert_eq!(
            apply("/a%2Fb", true, false, E::RejectRequest),
            Outcome::Reject
        );
        assert_eq!(
            apply("/a?%2F", true, false, E::RejectRequest),
            Outcome::Unchanged
        );
        assert_eq!(
            apply("/a%2fb?q", false, false, E::UnescapeAndRedirect),
            Outcome::Redirect("/a/b?q".into())
        );
        assert_eq!(
            apply("/a%2F", false, false, E::UnescapeAndForward),
            Outcome::Forward("/a/".into())
        );
    }
}
