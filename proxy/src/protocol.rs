//! What a connection or a request speaks: one vocabulary for detection, the
//! metrics' `protocol` label, the decision log and the tap.

/// A protocol, as detected on a connection or seen on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 (detected by the client preface of RFC 9113 §3.4).
    Http2,
    /// gRPC over HTTP/2, told apart per request by its content type.
    Grpc,
    /// A TLS ClientHello: passed through, routed once per connection.
    Tls,
    /// Anything else, or nothing within the detection timeout.
    Opaque,
}

impl Protocol {
    /// Every protocol, in the order of [`Protocol::index`].
    pub const ALL: [Protocol; 5] = [
        Protocol::Http1,
        Protocol::Http2,
        Protocol::Grpc,
        Protocol::Tls,
        Protocol::Opaque,
    ];
    /// How many there are: the length of per-protocol counter arrays.
    pub const COUNT: usize = Protocol::ALL.len();

    /// Its position in [`Protocol::ALL`], for counter arrays.
    pub const fn index(self) -> usize {
        match self {
            Protocol::Http1 => 0,
            Protocol::Http2 => 1,
            Protocol::Grpc => 2,
            Protocol::Tls => 3,
            Protocol::Opaque => 4,
        }
    }

    /// The label of requests and decisions.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Tls => "tls",
            Protocol::Opaque => "opaque",
        }
    }

    /// The label of connections. Both HTTP versions (and gRPC) share
    /// `http`: in bind mode hyper learns the version after the connection
    /// was counted.
    pub const fn connection_label(self) -> &'static str {
        match self {
            Protocol::Http1 | Protocol::Http2 | Protocol::Grpc => "http",
            Protocol::Tls => "tls",
            Protocol::Opaque => "opaque",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_sits_at_its_index() {
        for (i, p) in Protocol::ALL.iter().enumerate() {
            assert_eq!(p.index(), i, "{p:?}");
        }
    }

    #[test]
    fn http_connections_share_one_label_and_requests_keep_their_version() {
        assert_eq!(Protocol::Http1.connection_label(), "http");
        assert_eq!(Protocol::Http2.connection_label(), "http");
        assert_eq!(Protocol::Tls.connection_label(), "tls");
        assert_ne!(Protocol::Http1.as_str(), Protocol::Http2.as_str());
    }
}
