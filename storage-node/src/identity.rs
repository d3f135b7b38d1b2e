//! The node's identity as assigned by the control server on its first join
//! (`DIR/node-identity`, TOML), passed back on every later join.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: u64,
    /// The node key, lowercase hex.
    pub node_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {err}")]
    Io { path: String, err: String },
}

impl Identity {
    /// The stored identity, or the empty one (id 0) before the first join.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let err = |e: String| IdentityError::Io {
            path: path.display().to_string(),
            err: e,
        };
        match std::fs::read_to_string(path) {
            Ok(s) => toml::from_str(&s).map_err(|e| err(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Durably replaces the stored identity.
    pub fn store(&self, path: &Path) -> Result<(), IdentityError> {
        use std::io::Write;
        let err = |e: String| IdentityError::Io {
            path: path.display().to_string(),
            err: e,
        };
        let text = toml::to_string(self).map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        f.write_all(text.as_bytes())
            .map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(())
    }

    pub fn key_bytes(&self) -> Vec<u8> {
        (0..self.node_key.len() / 2)
            .filter_map(|i| u8::from_str_radix(self.node_key.get(2 * i..2 * i + 2)?, 16).ok())
            .collect()
    }

    pub fn key_hex(key: &[u8]) -> String {
        key.iter().map(|b| format!("{b:02x}")).collect()
    }
}
