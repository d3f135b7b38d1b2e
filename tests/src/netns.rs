//! Network namespaces for partition tests: a namespace joined to the host
//! by a veth pair, so that a server started inside it (`ip netns exec`) is
//! cut off from everything by setting its end of the pair down.

use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace joined to the host by a veth pair (a /30: the host
/// end has `host_ip`, the namespace end `ns_ip`). Removed on drop.
pub struct Netns {
    /// The namespace's name (for `ip netns exec`).
    pub name: String,
    host_if: String,
    ns_if: String,
    /// The host end's address (reachable from inside).
    pub host_ip: String,
    /// The namespace end's address (reachable from the host).
    pub ns_ip: String,
}

/// Runs `ip` with `args`; whether it succeeded.
pub fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Netns {
    /// Creates one (distinct from every other this process or another
    /// test process made), or `None` where the machine does not allow it.
    pub fn create() -> Option<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let unique = (std::process::id() % 1000) * 16 + NEXT.fetch_add(1, Ordering::Relaxed) % 16;
        let (a, b) = (unique / 64, (unique % 64) * 4);
        let ns = Netns {
            name: format!("rfs{unique}"),
            host_if: format!("rfs{unique}h"),
            ns_if: format!("rfs{unique}n"),
            host_ip: format!("10.213.{a}.{}", b + 1),
            ns_ip: format!("10.213.{a}.{}", b + 2),
        };
        let n = ns.name.as_str();
        let ok = ip(&["netns", "add", n])
            && ip(&[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns.ns_if,
            ])
            && ip(&["link", "set", &ns.ns_if, "netns", n])
            && ip(&[
                "addr",
                "add",
                &format!("{}/30", ns.host_ip),
                "dev",
                &ns.host_if,
            ])
            && ip(&["link", "set", &ns.host_if, "up"])
            && ip(&[
                "netns",
                "exec",
                n,
                "ip",
                "addr",
                "add",
                &format!("{}/30", ns.ns_ip),
                "dev",
                &ns.ns_if,
            ])
            && ip(&["netns", "exec", n, "ip", "link", "set", &ns.ns_if, "up"])
            && ip(&["netns", "exec", n, "ip", "link", "set", "lo", "up"]);
        // On failure, drop cleans up whatever was made.
        ok.then_some(ns)
    }

    /// Sets the namespace's end of the pair up (connected) or down (cut).
    pub fn set(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        assert!(ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "link",
            "set",
            &self.ns_if,
            state
        ]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["link", "del", &self.host_if]);
        ip(&["netns", "del", &self.name]);
    }
}
