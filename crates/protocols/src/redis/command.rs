//! Command names and redacted text: the name, the keys, and `?` for every
//! value, so span attributes never carry cached data or passwords.

use super::resp::Value;

/// Longest `query_text` we build.
const MAX_QUERY: usize = 1024;
/// Arguments rendered before " ...".
const MAX_ARGS: usize = 64;

/// Commands whose first argument is a subcommand (`CLIENT SETNAME`).
const TWO_WORD: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DEBUG", "FUNCTION", "LATENCY", "MEMORY",
    "MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];
/// Two-word commands whose next argument is a key (`OBJECT ENCODING k`).
const TWO_WORD_KEYED: &[&str] = &["OBJECT", "MEMORY", "XGROUP", "XINFO"];

/// Which arguments are shown as they are; the others become `?`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// The first argument (the key of most commands).
    First,
    /// The first two (`RENAME src dst`).
    FirstTwo,
    /// Every argument is a key or a channel (`MGET a b`, `SUBSCRIBE c`).
    All,
    /// All but the last, a timeout (`BLPOP a b 5`).
    AllButLast,
    /// Key/value pairs (`MSET k v k v`).
    Pairs,
    /// Nothing: scripts, passwords, echoed payloads.
    None,
}

fn keys_of(name: &str) -> Keys {
    match name {
        "MGET" | "DEL" | "UNLINK" | "EXISTS" | "TOUCH" | "WATCH" | "SINTER" | "SUNION"
        | "SDIFF" | "SINTERSTORE" | "SUNIONSTORE" | "SDIFFSTORE" | "PFCOUNT" | "PFMERGE"
        | "SUBSCRIBE" | "UNSUBSCRIBE" | "PSUBSCRIBE" | "PUNSUBSCRIBE" | "SSUBSCRIBE"
        | "SUNSUBSCRIBE" => Keys::All,
        "BLPOP" | "BRPOP" | "BZPOPMIN" | "BZPOPMAX" | "BRPOPLPUSH" => Keys::AllButLast,
        "MSET" | "MSETNX" => Keys::Pairs,
        "RENAME" | "RENAMENX" | "SMOVE" | "RPOPLPUSH" | "LMOVE" | "BLMOVE" | "COPY" => {
            Keys::FirstTwo
        }
        "AUTH" | "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" | "ECHO"
        | "PING" | "MIGRATE" => Keys::None,
        _ => Keys::First,
    }
}

/// Upper-case operation name and redacted text of a command (an array of
/// blobs); None when it has no name.
pub fn render(cmd: &Value) -> Option<(String, String)> {
    let args = &cmd.children;
    let first = args.first()?;
    if first.text.is_empty() {
        return None;
    }
    let name = String::from_utf8_lossy(&first.text).to_ascii_uppercase();
    let (op, rest_from, keys) = match args.get(1) {
        Some(sub) if TWO_WORD.contains(&name.as_str()) => {
            let sub = String::from_utf8_lossy(&sub.text).to_ascii_uppercase();
            let keys = if TWO_WORD_KEYED.contains(&name.as_str()) {
                Keys::First
            } else {
                Keys::None
            };
            (format!("{name} {sub}"), 2, keys)
        }
        _ => (name.clone(), 1, keys_of(&name)),
    };
    let total = (cmd.len.max(0) as usize).max(args.len());
    let n = total.saturating_sub(rest_from);
    let mut text = op.clone();
    for i in 0..n {
        if i >= MAX_ARGS || text.len() >= MAX_QUERY {
            text.push_str(" ...");
            break;
        }
        let shown = match keys {
            Keys::First => i == 0,
            Keys::FirstTwo => i < 2,
            Keys::All => true,
            Keys::AllButLast => i + 1 < n,
            Keys::Pairs => i % 2 == 0,
            Keys::None => false,
        };
        text.push(' ');
        match args.get(rest_from + i) {
            Some(a) if shown => {
                let s = String::from_utf8_lossy(&a.text);
                let room = MAX_QUERY.saturating_sub(text.len()).max(1);
                match s.char_indices().nth(room) {
                    Some((cut, _)) => text.push_str(&s[..cut]),
                    None => text.push_str(&s),
                }
            }
            Some(_) => text.push('?'),
            // Not kept (beyond MAX_CHILDREN): a key we did not store.
            None if shown => {
                text.push_str("...");
                break;
            }
            None => text.push('?'),
        }
    }
    Some((op, text))
}

/// Inline commands recognised by `detect`. Names memcached shares (`get`,
/// `set`, `delete`, `incr`...) and HTTP methods are left out on purpose.
const INLINE: &[&str] = &[
    "PING",
    "INFO",
    "SELECT",
    "KEYS",
    "EXISTS",
    "DBSIZE",
    "FLUSHDB",
    "FLUSHALL",
    "HELLO",
    "AUTH",
    "MONITOR",
    "COMMAND",
    "CLIENT",
    "CONFIG",
    "LPUSH",
    "RPUSH",
    "LRANGE",
    "HGET",
    "HSET",
    "HGETALL",
    "SUBSCRIBE",
    "PUBLISH",
    "TTL",
    "TYPE",
    "SCAN",
    "MULTI",
    "EXEC",
    "SETEX",
    "MGET",
    "DEL",
];

/// Does this look like the start of Redis traffic? Client: a RESP array of
/// blobs whose first blob is a plausible command name, or a known inline
/// command. Server: a well-formed RESP header line of a common reply type.
pub fn detect(from_client: bool, data: &[u8]) -> bool {
    if from_client {
        if data.first() == Some(&b'*') {
            return detect_array(data);
        }
        let line_end = match memchr::memchr(b'\n', data) {
            Some(i) if i > 0 && data[i - 1] == b'\r' => i - 1,
            _ => return false,
        };
        let line = &data[..line_end];
        let word_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
        let word = &line[..word_end];
        return !word.is_empty()
            && word.len() <= 16
            && INLINE
                .iter()
                .any(|k| k.as_bytes().eq_ignore_ascii_case(word))
            && line
                .iter()
                .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
    }
    let Some((&t, rest)) = data.split_first() else {
        return false;
    };
    let Some(end) = memchr::memchr(b'\r', rest) else {
        return false;
    };
    if rest.get(end + 1) != Some(&b'\n') {
        return false;
    }
    let body = &rest[..end];
    match t {
        b'+' | b'-' => {
            let word_end = body.iter().position(|&b| b == b' ').unwrap_or(body.len());
            word_end > 0
                && body[..word_end].iter().all(|b| b.is_ascii_uppercase())
                && body.iter().all(|&b| (0x20..0x7f).contains(&b))
        }
        b':' | b'$' | b'*' | b'%' | b'~' | b'>' => {
            let digits = body.strip_prefix(b"-").unwrap_or(body);
            !digits.is_empty() && digits.len() <= 12 && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

/// `*N\r\n$M\r\nNAME`: N and M small decimal numbers, NAME letters.
fn detect_array(data: &[u8]) -> bool {
    fn num_line(d: &[u8], prefix: u8, max: u64) -> Option<(u64, usize)> {
        if d.first() != Some(&prefix) {
            return None;
        }
        let end = d.iter().position(|&b| b == b'\r')?;
        if !(2..=11).contains(&end) || d.get(end + 1) != Some(&b'\n') {
            return None;
        }
        let n: u64 = std::str::from_utf8(&d[1..end]).ok()?.parse().ok()?;
        (d[1..end].iter().all(u8::is_ascii_digit) && (1..=max).contains(&n)).then_some((n, end + 2))
    }
    let Some((_, a)) = num_line(data, b'*', 1 << 31) else {
        return false;
    };
    let Some((m, b)) = num_line(&data[a..], b'$', 32) else {
        return false;
    };
    let name = &data[a + b..];
    let name = &name[..name.len().min(m as usize)];
    !name.is_empty()
        && name
            .iter()
            .all(|&c| c.is_ascii_alphabetic() || c == b'_' || c == b'-' || c == b'|' || c == b'.')
}
