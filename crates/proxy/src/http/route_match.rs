//! Matching a request against a RouteConfiguration the way Envoy does:
//! virtual host by `:authority` (exact, longest `*suffix`, longest `prefix*`,
//! then `*`), then the first route whose path, headers and query parameters
//! all match.

use std::borrow::Cow;

use http::{HeaderMap, Method};

use crate::config::route::{
    HeaderMatch, HeaderMatcher, PathMatch, QueryParameterMatcher, Route, RouteConfig, RouteMatch,
    StringMatch, VirtualHost,
};

/// The parts of a request that routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// `:path`, with the query string.
    pub path: &'a str,
    pub authority: &'a str,
    pub headers: &'a HeaderMap,
}

impl RequestView<'_> {
    fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(self.path, |(p, _)| p)
    }

    fn query(&self) -> &str {
        self.path.split_once('?').map_or("", |(_, q)| q)
    }

    /// A header's value as Envoy sees it: pseudo-headers included, repeated
    /// headers joined with `,`.
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        match name {
            ":method" => Some(Cow::Borrowed(self.method.as_str())),
            ":path" => Some(Cow::Borrowed(self.path)),
            ":authority" | "host" => Some(Cow::Borrowed(self.authority)),
            ":scheme" => Some(Cow::Borrowed("http")),
            _ => {
                let mut values = self.headers.get_all(name).iter();
                let first = values.next()?;
                let first = String::from_utf8_lossy(first.as_bytes());
                let mut rest = values.peekable();
                if rest.peek().is_none() {
                    return Some(first);
                }
                let mut joined = first.into_owned();
                for v in rest {
                    joined.push(',');
                    joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
                Some(Cow::Owned(joined))
            }
        }
    }
}

impl RouteConfig {
    /// The virtual host for an authority (Host header), port included as sent.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let host: Cow<'_, str> = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(authority.to_ascii_lowercase())
        } else {
            Cow::Borrowed(authority)
        };
        let d = &self.domains;
        let idx = d
            .exact
            .get(host.as_ref())
            .copied()
            .or_else(|| {
                d.suffixes
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|(_, i)| *i)
            })
            .or_else(|| {
                d.prefixes
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|(_, i)| *i)
            })
            .or(d.any)?;
        self.virtual_hosts.get(idx)
    }
}

impl VirtualHost {
    /// The first route that matches.
    pub fn route(&self, req: &RequestView<'_>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(req))
    }
}

impl RouteMatch {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => starts_with(req.path, p, !self.case_sensitive),
            PathMatch::Path(p) => {
                let path = req.path_only();
                if self.case_sensitive {
                    path == p
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
            PathMatch::Regex(re) => re.is_match(req.path_only()),
        };
        path_ok
            && self.headers.iter().all(|h| h.matches(req))
            && self.query_parameters.iter().all(|q| q.matches(req.query()))
    }
}

fn starts_with(s: &str, prefix: &str, ignore_case: bool) -> bool {
    s.len() >= prefix.len()
        && if ignore_case {
            s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        } else {
            s.as_bytes().starts_with(prefix.as_bytes())
        }
}

impl HeaderMatcher {
    /// Envoy's HeaderUtility::matchHeaders, including its rules for a missing
    /// header under invert_match.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let value = req.header(&self.name);
        let value = match value {
            Some(v) => v,
            None if self.treat_missing_as_empty => Cow::Borrowed(""),
            None => {
                return match self.kind {
                    HeaderMatch::Present(p) => p == self.invert,
                    HeaderMatch::String(_) => false,
                };
            }
        };
        let m = match &self.kind {
            HeaderMatch::Present(p) => *p,
            HeaderMatch::String(s) => s.matches(&value),
        };
        m != self.invert
    }
}

impl QueryParameterMatcher {
    pub fn matches(&self, query: &str) -> bool {
        let value = query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == self.name).then_some(v)
        });
        match (&self.string_match, value) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(s), Some(v)) => s.matches(v),
        }
    }
}

impl StringMatch {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            StringMatch::Exact(s, false) => v == s,
            StringMatch::Exact(s, true) => v.eq_ignore_ascii_case(s),
            StringMatch::Prefix(s, ic) => starts_with(v, s, *ic),
            StringMatch::Suffix(s, false) => v.ends_with(s.as_str()),
            StringMatch::Suffix(s, true) => {
                v.len() >= s.len()
                    && v.as_bytes()[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            StringMatch::Contains(s, false) => v.contains(s.as_str()),
            StringMatch::Contains(s, true) => v.to_ascii_lowercase().contains(s.as_str()),
            StringMatch::Regex(re) => re.is_match(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::route::XdsRouteConfiguration;

    fn config() -> RouteConfig {
        let rc: XdsRouteConfiguration = xds::json::from_yaml(
            r#"
name: r
virtual_hosts:
- name: exact
  domains: [reviews, "reviews:9080"]
  routes:
  - match: {path: /exact}
    route: {cluster: path}
  - match: {safe_regex: {regex: "/re/[0-9]+"}}
    route: {cluster: regex}
  - match:
      prefix: /
      headers: [{name: end-user, string_match: {exact: jason}}]
    route: {cluster: header}
  - match:
      prefix: /
      query_parameters: [{name: v, string_match: {prefix: "2"}}]
    route: {cluster: query}
  - match:
      prefix: /
      headers: [{name: x-missing, present_match: true, invert_match: true}, {name: ":method", string_match: {exact: POST}}]
    route: {cluster: post}
  - match: {prefix: /API, case_sensitive: false}
    route: {cluster: api}
- name: suffix
  domains: ["*.example.com", "*.b.example.com"]
  routes: [{match: {prefix: /}, route: {cluster: s}}]
- name: prefix
  domains: ["foo.*"]
  routes: [{match: {prefix: /}, route: {cluster: p}}]
- name: any
  domains: ["*"]
  routes: [{match: {prefix: /only}, route: {cluster: any}}]
"#,
        )
        .unwrap();
        RouteConfig::try_from(&rc).unwrap()
    }

    fn route(
        rc: &RouteConfig,
        method: &str,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let method: Method = method.parse().unwrap();
        let req = RequestView {
            method: &method,
            path,
            authority,
            headers: &h,
        };
        let vh = rc.virtual_host(authority)?;
        vh.route(&req)
            .and_then(|r| r.action.clusters())
            .map(|c| c.pick(0).to_string())
    }

    #[test]
    fn virtual_host_order() {
        let rc = config();
        assert_eq!(rc.virtual_host("Reviews:9080").unwrap().name, "exact");
        assert_eq!(rc.virtual_host("x.b.example.com").unwrap().name, "suffix");
        assert_eq!(rc.virtual_host("example.com").unwrap().name, "any");
        assert_eq!(rc.virtual_host("foo.bar").unwrap().name, "prefix");
        assert_eq!(rc.virtual_host("other").unwrap().name, "any");
    }

    #[test]
    fn route_matches() {
        let rc = config();
        let r = |m, p, h: &[(&str, &str)]| route(&rc, m, "reviews", p, h);
        assert_eq!(r("GET", "/exact?x=1", &[]).as_deref(), Some("path"));
        assert_eq!(r("GET", "/re/123", &[]).as_deref(), Some("regex"));
        assert_eq!(r("GET", "/re/12a", &[]), None);
        assert_eq!(
            r("GET", "/x", &[("end-user", "jason")]).as_deref(),
            Some("header")
        );
        assert_eq!(r("GET", "/x?a=b&v=2.1", &[]).as_deref(), Some("query"));
        assert_eq!(r("POST", "/x", &[]).as_deref(), Some("post"));
        assert_eq!(r("POST", "/x", &[("x-missing", "1")]), None);
        assert_eq!(r("GET", "/api/v1", &[]).as_deref(), Some("api"));
        assert_eq!(route(&rc, "GET", "zzz", "/nope", &[]), None);
    }
}
