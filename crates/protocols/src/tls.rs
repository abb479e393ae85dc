//! TLS records seen on a socket before (or instead of) plaintext: enough to
//! tell ciphertext from an application protocol, and to read the version and
//! ALPN the server chose from its ServerHello (tls-parser does the parsing).

use tls_parser::{
    parse_tls_extensions, parse_tls_plaintext, TlsExtension, TlsMessage, TlsMessageHandshake,
};

/// Content types of TLS records (RFC 8446 5.1).
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const CHANGE_CIPHER_SPEC: u8 = 20;

/// Does `data` start with a TLS record header (content type, version 3.x,
/// sane length)? Cheap enough for the first bytes of every connection.
pub fn is_record_start(data: &[u8]) -> bool {
    if data.len() < 5 {
        return false;
    }
    let len = u16::from_be_bytes([data[3], data[4]]) as usize;
    matches!(
        data[0],
        HANDSHAKE | APPLICATION_DATA | ALERT | CHANGE_CIPHER_SPEC
    ) && data[1] == 3
        && data[2] <= 4
        && len > 0
        && len <= 16384 + 2048
}

/// Is this the start of a ClientHello (a client opening TLS)?
pub fn is_client_hello(data: &[u8]) -> bool {
    is_record_start(data) && data[0] == HANDSHAKE && data.get(5) == Some(&1)
}

/// What the server's hello says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerHelloInfo {
    /// "1.2", "1.3"...
    pub version: String,
    /// Protocol chosen by ALPN (visible in TLS 1.2 only: 1.3 encrypts it).
    pub alpn: Option<String>,
}

fn version_text(v: u16) -> String {
    match v {
        0x0304 => "1.3".into(),
        0x0303 => "1.2".into(),
        0x0302 => "1.1".into(),
        0x0301 => "1.0".into(),
        other => format!("0x{other:04x}"),
    }
}

/// Reads a ServerHello from the first record of `data`, if it is one.
pub fn server_hello(data: &[u8]) -> Option<ServerHelloInfo> {
    let (_, record) = parse_tls_plaintext(data).ok()?;
    for msg in &record.msg {
        let TlsMessage::Handshake(TlsMessageHandshake::ServerHello(hello)) = msg else {
            continue;
        };
        let mut info = ServerHelloInfo {
            version: version_text(hello.version.0),
            alpn: None,
        };
        if let Some(ext) = hello.ext {
            if let Ok((_, exts)) = parse_tls_extensions(ext) {
                for e in exts {
                    match e {
                        // TLS 1.3 keeps 1.2 in the legacy field.
                        TlsExtension::SupportedVersions(v) => {
                            if let Some(v) = v.first() {
                                info.version = version_text(v.0);
                            }
                        }
                        TlsExtension::ALPN(protos) => {
                            info.alpn = protos
                                .first()
                                .map(|p| String::from_utf8_lossy(p).into_owned());
                        }
                        _ => {}
                    }
                }
            }
        }
        return Some(info);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_starts() {
        assert!(is_record_start(&[22, 3, 1, 0, 200, 1]));
        assert!(is_client_hello(&[22, 3, 1, 0, 200, 1]));
        assert!(is_record_start(&[23, 3, 3, 0, 40]));
        assert!(!is_client_hello(&[23, 3, 3, 0, 40, 1]));
        assert!(!is_record_start(b"GET / HTTP/1.1\r\n"));
        assert!(!is_record_start(&[22, 3, 1, 0, 0]));
        assert!(!is_record_start(&[22, 3]));
    }

    /// A ServerHello for TLS 1.3 (legacy version 1.2 + supported_versions)
    /// with ALPN h2, built per RFC 8446 4.1.3.
    #[test]
    fn server_hello_version_and_alpn() {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0x13, 0x01]); // cipher
        body.push(0); // compression
        let mut ext = vec![0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]; // supported_versions: 1.3
        ext.extend_from_slice(&[0x00, 0x10, 0x00, 0x05, 0x00, 0x03, 0x02, b'h', b'2']);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![2u8, 0, 0, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![22u8, 3, 3];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        let info = server_hello(&rec).unwrap();
        assert_eq!(info.version, "1.3");
        assert_eq!(info.alpn.as_deref(), Some("h2"));
        assert_eq!(server_hello(&rec[..20]), None);
        assert_eq!(server_hello(b"garbage"), None);
    }

    /// What the agent reads of the server's side of a captured handshake
    /// (testdata/capture_tls.py), as it reads it: the bytes so far, after
    /// every call, until the hello parses. `header_apart`: each recv split
    /// after 5 bytes, as OpenSSL reads a record's header and its body.
    fn hello_of(name: &str, header_apart: bool) -> (Option<ServerHelloInfo>, usize) {
        let mut seen = Vec::new();
        let mut calls = 0;
        for (from_client, bytes) in crate::testkit::capture("tls", name) {
            if from_client {
                continue;
            }
            let cut = if header_apart {
                bytes.len().min(5)
            } else {
                bytes.len()
            };
            for part in [&bytes[..cut], &bytes[cut..]] {
                if part.is_empty() {
                    continue;
                }
                calls += 1;
                seen.extend_from_slice(part);
                if let Some(info) = server_hello(&seen) {
                    return (Some(info), calls);
                }
            }
        }
        (None, calls)
    }

    #[test]
    fn captured_handshakes() {
        let cases = [
            ("tls12_alpn_h2.cap", "1.2", Some("h2")),
            ("tls12_alpn_http11.cap", "1.2", Some("http/1.1")),
            ("tls12_no_alpn.cap", "1.2", None),
            ("tls12_alpn_h2_grpcio.cap", "1.2", Some("h2")),
            // TLS 1.3 sends ALPN in EncryptedExtensions, after the hello.
            ("tls13_alpn_hidden.cap", "1.3", None),
            ("tls13_curl.cap", "1.3", None),
        ];
        for (name, version, alpn) in cases {
            let records = crate::testkit::capture("tls", name);
            let (first_client, hello) = (&records[0].1, &records[1].1);
            assert!(records[0].0 && !records[1].0, "{name}: client speaks first");
            assert!(is_client_hello(first_client), "{name}");
            assert!(is_record_start(hello) && !is_client_hello(hello), "{name}");
            for header_apart in [false, true] {
                let (info, calls) = hello_of(name, header_apart);
                let info = info.unwrap_or_else(|| panic!("{name}: no hello read"));
                assert_eq!(info.version, version, "{name}");
                assert_eq!(info.alpn.as_deref(), alpn, "{name}");
                // The hello is the server's first record: read from its first call.
                assert_eq!(calls, 1 + header_apart as usize, "{name}");
            }
            // After the handshake, application data records still look like TLS.
            let data = records
                .iter()
                .skip(2)
                .find(|(_, b)| b[0] == APPLICATION_DATA)
                .unwrap_or_else(|| panic!("{name}: no application data"));
            assert!(is_record_start(&data.1), "{name}");
            assert!(!is_client_hello(&data.1), "{name}");
        }
    }

    /// Every cut of a captured hello is incomplete, never misread.
    #[test]
    fn captured_hello_cut_anywhere() {
        let records = crate::testkit::capture("tls", "tls12_alpn_h2.cap");
        let hello = &records[1].1;
        let record_len = 5 + u16::from_be_bytes([hello[3], hello[4]]) as usize;
        for cut in 0..record_len {
            assert_eq!(server_hello(&hello[..cut]), None, "cut at {cut}");
        }
        assert!(server_hello(&hello[..record_len]).is_some());
    }
}
