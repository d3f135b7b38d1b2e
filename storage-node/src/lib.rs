//! ringfs storage node: thread-per-core io_uring chunk server.
