//! A hasher for map keys that are already uniformly random.

use std::hash::Hasher;

/// A [`Hasher`] for keys that are already uniform and unpredictable to an attacker (keyed
/// hashes, SHA-256 digests): it keeps their bits instead of hashing them again. A `u64`
/// written with [`Hasher::write_u64`] is the hash itself; other bytes are folded in eight at
/// a time. Not for keys an attacker chooses: it gives no protection against collisions.
///
/// ```
/// use std::collections::HashMap;
/// use std::hash::BuildHasherDefault;
/// use tenancy_core::UniformHasher;
///
/// let mut by_digest: HashMap<[u8; 32], &str, BuildHasherDefault<UniformHasher>> =
///     HashMap::default();
/// by_digest.insert([7; 32], "seven");
/// assert_eq!(by_digest.get(&[7; 32]), Some(&"seven"));
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct UniformHasher(u64);

impl Hasher for UniformHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}
