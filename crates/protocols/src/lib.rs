//! Pure protocol parsers: functions over bytes, no I/O, no globals. Each has
//! unit tests on captured real traffic (testdata/) and a fuzz target (fuzz/).

pub mod db;
pub mod dns;
pub mod go_binary;
pub mod http1;
pub mod http2;
pub mod memcached;
pub mod mysql;
pub mod openssl_binary;
pub mod postgres;
pub mod redis;
pub mod sql;
pub mod tls;

#[cfg(test)]
mod testkit;
