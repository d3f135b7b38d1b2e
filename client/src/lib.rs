//! ringfs client library and the ringfs CLI.
