//! Pure protocol parsers: functions over bytes, no I/O, no globals. Each has
//! unit tests on captured real traffic (testdata/) and a fuzz target (fuzz/).

pub mod http1;
