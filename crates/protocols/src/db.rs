//! What every database and cache parser reports: one operation per request
//! and its answer, in the order the client sent them. Parsers take bytes
//! from the client's point of view (`from_client`), so the same parser works
//! when the observed process is the client (egress = from client) and when
//! it is the server (ingress = from client).

pub use crate::http1::{Segment, Timing};

/// `db.system.name` values (OpenTelemetry semantic conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DbSystem {
    Postgresql,
    Mysql,
    /// MySQL wire protocol, server greeting says MariaDB.
    Mariadb,
    Redis,
    Memcached,
}

impl DbSystem {
    pub fn name(self) -> &'static str {
        match self {
            DbSystem::Postgresql => "postgresql",
            DbSystem::Mysql => "mysql",
            DbSystem::Mariadb => "mariadb",
            DbSystem::Redis => "redis",
            DbSystem::Memcached => "memcached",
        }
    }
}

/// The server said no: SQLSTATE, MySQL error number, Redis error prefix
/// (`ERR`, `WRONGTYPE`...), or memcached's `ERROR`/`CLIENT_ERROR`/`SERVER_ERROR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    /// Goes to `db.response.status_code`.
    pub code: String,
    pub message: String,
}

/// One request and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbOperation {
    pub system: DbSystem,
    /// The statement as the client sent it. SQL systems: raw text, literals
    /// NOT yet replaced (the consumer runs `sql::sanitize`); for prepared
    /// statements, the text remembered from Parse/COM_STMT_PREPARE, None if
    /// it was prepared before we joined. Redis/memcached: command with
    /// values already replaced by `?` (e.g. `SET user:1 ?`).
    pub query_text: Option<String>,
    /// Set when the protocol names the operation itself (Redis command,
    /// memcached verb, `COMMIT` in a prepared-statement execute we can't
    /// see the text of is not guessed). SQL systems leave it None: the
    /// consumer derives it from the text.
    pub operation: Option<String>,
    /// Database name / index the connection works in, when seen.
    pub namespace: Option<String>,
    /// True when this ran a prepared statement (Execute / COM_STMT_EXECUTE).
    pub prepared: bool,
    pub error: Option<DbError>,
    /// Rows returned or affected, when the protocol reports it.
    pub rows: Option<u64>,
    /// Syscall that carried the request's first bytes.
    pub request_start: Timing,
    /// Exit time of the syscall that carried the answer's last byte (the
    /// close, when the connection closed before the answer ended).
    pub response_end_ns: u64,
    /// Whether the answer came before the connection closed.
    pub answer: Answer,
}

/// How much of an operation's answer the connection carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Answer {
    /// All of it (or all of what the capture let us follow).
    #[default]
    Complete,
    /// The connection closed while the answer was being sent.
    Incomplete,
    /// The connection closed before any of it: a blocking command the
    /// client gave up on, a server that died or dropped the client.
    Missing,
}

impl Answer {
    /// `error.type` of an operation the close cut short (the same values as
    /// HTTP's), None when it was answered.
    pub fn error_type(self) -> Option<&'static str> {
        match self {
            Answer::Complete => None,
            Answer::Incomplete => Some("response_incomplete"),
            Answer::Missing => Some("no_response"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbEvent {
    Operation(Box<DbOperation>),
    /// Something we could not parse; a stable short name for counters.
    Error(&'static str),
}

/// One connection's parser state, both directions.
pub trait DbConnection: Send {
    /// Bytes of one syscall. `from_client`: the client sent them.
    fn feed(&mut self, from_client: bool, seg: &Segment<'_>, out: &mut Vec<DbEvent>);
    /// The TLS library's plaintext of this connection is what comes next
    /// (the ciphertext never reaches the parser): a session that negotiated
    /// TLS in the protocol (PostgreSQL SSLRequest, MySQL SSL login) goes on
    /// inside it.
    fn tls_plaintext(&mut self) {}
    /// True between the protocol's agreement to TLS and its plaintext: the
    /// bytes on the wire are TLS records now.
    fn awaits_tls(&self) -> bool {
        false
    }
    /// The connection closed at `closed_ns`: report what can still be
    /// reported, operations left unanswered included (ending at the close).
    fn close(&mut self, closed_ns: u64, out: &mut Vec<DbEvent>);
}
