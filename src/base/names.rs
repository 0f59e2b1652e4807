//! Names and ids: the one rule every operator, role, scope and workload name follows, and
//! fresh random ids.

use crate::base::constants::MAX_NAME_LEN;

/// Whether `value` is a valid name: 1 to `MAX_NAME_LEN` bytes of `a-z`, `0-9`, `.`, `_`, `-`
/// (no `/`, which key layouts use as a separator).
pub fn is_valid_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// The OS had no randomness to give. Nothing was created; retry, and check the host.
#[derive(Debug, thiserror::Error)]
#[error("no randomness: {0}")]
pub struct NoRandomness(String);

impl NoRandomness {
    /// What the OS said.
    pub fn detail(&self) -> &str {
        &self.0
    }
}

/// `N` random bytes from the OS.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], NoRandomness> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| NoRandomness(e.to_string()))?;
    Ok(bytes)
}

/// A fresh id: `N` random bytes, hex.
pub fn random_id<const N: usize>() -> Result<String, NoRandomness> {
    Ok(hex::encode(random_bytes::<N>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_ascii_words_without_separators() {
        for ok in ["alice", "db-root", "vault.db_2", "a"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in ["", "Alice", "a/b", "a b", "é", long.as_str()] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn ids_are_fresh_hex_of_the_asked_length() {
        let (a, b) = (random_id::<12>().unwrap(), random_id::<12>().unwrap());
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
    }
}
