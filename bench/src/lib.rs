//! ringfs load generator and local-cluster launcher.
