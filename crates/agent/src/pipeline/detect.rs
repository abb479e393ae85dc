//! Which protocol a connection speaks, decided from its first bytes (ports
//! lie: databases run on any port, proxies front everything).

use autotel_protocols::db::DbConnection;
use autotel_protocols::http1::{self, Dir};
use autotel_protocols::{http2, memcached, mysql, postgres, redis};

/// What a connection's bytes go to.
pub enum Protocol {
    Http1,
    /// HTTP/2: from its start (the client preface, or the server's
    /// SETTINGS, was seen), or joined `midway` (frames only).
    Http2 {
        server_side: bool,
        midway: bool,
    },
    /// HTTP/2 frames that do not say which end wrote them: a later call's
    /// bytes decide (these are not kept: no parser could use them).
    NotYet,
    /// `server_side`: the observed process is the database server.
    Db {
        parser: Box<dyn DbConnection>,
        server_side: bool,
        /// Parser name for error counters.
        name: &'static str,
    },
}

/// Kernel role of the fd: accepted (server), connected (client) or unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
    Unknown,
}

type Detector = (
    &'static str,
    fn(bool, &[u8]) -> bool,
    fn() -> Box<dyn DbConnection>,
);

/// Database detectors, most specific first (binary framings before text).
const DB_DETECTORS: [Detector; 4] = [
    ("postgresql", postgres::detect, || {
        Box::new(postgres::PostgresConnection::new())
    }),
    ("mysql", mysql::detect, || {
        Box::new(mysql::MysqlConnection::new())
    }),
    ("redis", redis::detect, || {
        Box::new(redis::RedisConnection::new())
    }),
    ("memcached", memcached::detect, || {
        Box::new(memcached::MemcachedConnection::new())
    }),
];

/// Decides from the first bytes seen; None when nothing matched (the caller
/// falls back to HTTP/1, whose parser waits for a message start by itself).
/// `cut`: `data` is a captured prefix of what the call moved.
pub fn detect(role: Role, dir: Dir, data: &[u8], cut: bool) -> Option<Protocol> {
    // Before HTTP/1: the preface "PRI * HTTP/2.0" parses as an HTTP/1 request.
    if http2::detect(true, data) {
        return Some(Protocol::Http2 {
            server_side: dir == Dir::Ingress,
            midway: false,
        });
    }
    // Servers (gRPC among them) may send their SETTINGS before reading the
    // preface: recognisable only when the role says the server wrote it.
    let server_wrote = matches!(
        (role, dir),
        (Role::Server, Dir::Egress) | (Role::Client, Dir::Ingress)
    );
    if server_wrote && http2::detect(false, data) {
        return Some(Protocol::Http2 {
            server_side: role == Role::Server,
            midway: false,
        });
    }
    if http1::looks_like_request(data) || http1::looks_like_response(data) {
        return Some(Protocol::Http1);
    }
    // Who sent these bytes: known from the role, else try both readings.
    let readings: &[bool] = match (role, dir) {
        (Role::Client, Dir::Egress) | (Role::Server, Dir::Ingress) => &[true],
        (Role::Client, Dir::Ingress) | (Role::Server, Dir::Egress) => &[false],
        (Role::Unknown, _) => &[true, false],
    };
    for &from_client in readings {
        for (name, matches, make) in DB_DETECTORS {
            if matches(from_client, data) {
                // The client sent ingress bytes: we are the server.
                let server_side = from_client == (dir == Dir::Ingress);
                return Some(Protocol::Db {
                    parser: make(),
                    server_side,
                    name,
                });
            }
        }
    }
    // Last (its evidence is the weakest): a connection that opened before
    // the agent started, now between frames.
    match http2::midway(data, cut) {
        http2::Midway::FromClient(from_client) => Some(Protocol::Http2 {
            // The client wrote ingress bytes: we are the server.
            server_side: from_client == (dir == Dir::Ingress),
            midway: true,
        }),
        http2::Midway::Frames => Some(Protocol::NotYet),
        http2::Midway::No => None,
    }
}
