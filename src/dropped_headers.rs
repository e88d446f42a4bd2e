//! The request headers hookgate never forwards as the sender sent them: it drops them,
//! or sets them itself. A floor below both the forwarding (`forward`), which applies
//! the list, and the config (`config::source`), which refuses a source that reads its
//! event type or dedupe key from one of them: the backend would never see the value the
//! delivery was routed or deduplicated on.

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), the ones
/// this gateway sets itself, and the ones frameworks believe about the client or the
/// URL when a proxy is configured as trusted (client IP, original URL, method
/// override): a client must not be able to pre-set any of them. Names are lower case
/// without `_` (those are dropped before this is asked).
pub fn is_dropped(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "expect"
            | "host"
            | "content-length"
            | "forwarded"
            | "x-forwarded"
            | "x-real-ip"
            | "true-client-ip"
            | "client-ip"
            | "x-client-ip"
            | "x-cluster-client-ip"
            | "cf-connecting-ip"
            | "fastly-client-ip"
            | "x-original-url"
            | "x-rewrite-url"
            | "x-original-host"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            | "x-scheme"
            | "x-url-scheme"
            | "front-end-https"
            | "x-forwarded-ssl"
            | "x-original-uri"
            | "x-original-proto"
    ) || name.starts_with("x-forwarded-")
        || name.starts_with("x-envoy-")
        || name.starts_with("x-hookgate-")
}
