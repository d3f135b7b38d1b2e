//! Validation of namespace paths. A valid path is absolute, '/'-separated,
//! has no empty, `.` or `..` components, no NUL bytes, names of at most
//! [`MAX_NAME_BYTES`] and at most [`MAX_PATH_BYTES`] in all. A trailing '/'
//! is tolerated (as POSIX does for directories).

use crate::error::{ControlError, Result};

/// Longest name of one directory entry, in bytes (as Linux's NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest path, in bytes (as Linux's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;

/// The components of a validated absolute path; empty for the root.
pub fn components(path: &str) -> Result<Vec<&str>> {
    let bad = |why: &str| {
        Err(ControlError::InvalidArgument(format!(
            "path {path:?}: {why}"
        )))
    };
    if path.len() > MAX_PATH_BYTES {
        return bad("longer than 4096 bytes");
    }
    let Some(rest) = path.strip_prefix('/') else {
        return bad("not absolute (must start with '/')");
    };
    // One trailing '/' is tolerated ("/dir/"), but not a bare "//".
    let rest = match rest.strip_suffix('/') {
        Some(r) if !r.is_empty() => r,
        _ => rest,
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for name in rest.split('/') {
        match name {
            "" => return bad("empty component ('//')"),
            "." | ".." => return bad("'.' and '..' components are not allowed"),
            n if n.len() > MAX_NAME_BYTES => return bad("a name is longer than 255 bytes"),
            n if n.contains('\0') => return bad("contains a NUL byte"),
            n => out.push(n),
        }
    }
    Ok(out)
}

/// The parent components and the final name of a path that is not the root.
pub fn split_last(path: &str) -> Result<(Vec<&str>, &str)> {
    let mut comps = components(path)?;
    match comps.pop() {
        Some(name) => Ok((comps, name)),
        None => Err(ControlError::InvalidArgument(format!(
            "path {path:?}: the root cannot be created, removed or renamed"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_paths() {
        assert_eq!(components("/").unwrap(), Vec::<&str>::new());
        assert_eq!(
            components("/a/b c/d.txt").unwrap(),
            vec!["a", "b c", "d.txt"]
        );
        assert_eq!(components("/dir/").unwrap(), vec!["dir"]);
        assert_eq!(
            components(&format!("/{}", "x".repeat(255))).unwrap().len(),
            1
        );
    }

    #[test]
    fn rejects_bad_paths() {
        for p in [
            "", "a/b", "//", "/a//b", "/a/./b", "/a/../b", "/..", "/.", "/a\0b",
        ] {
            assert!(
                matches!(components(p), Err(ControlError::InvalidArgument(_))),
                "{p:?} was accepted"
            );
        }
        assert!(components(&format!("/{}", "x".repeat(256))).is_err());
        assert!(components(&"/a".repeat(2049)).is_err());
    }

    #[test]
    fn root_has_no_last_name() {
        assert!(split_last("/").is_err());
        assert_eq!(split_last("/a/b").unwrap(), (vec!["a"], "b"));
    }
}
