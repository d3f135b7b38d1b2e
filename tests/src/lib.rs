//! ringfs integration tests that start real processes.
