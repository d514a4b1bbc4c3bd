//! ed25519 signatures over baseline digests.
//!
//! The bake pipeline holds the private key; hosts and the collector hold the public key.
//! What is signed is not the file but its 32-byte BLAKE3 digest, prefixed with a domain
//! string so that a signature made for a baseline can never be replayed as a signature
//! over anything else the same key might sign.
//!
//! Keys are stored as PEM: PKCS#8 for the private key, SubjectPublicKeyInfo for the
//! public key — the forms `openssl pkey` reads and writes.

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;

/// Prepended to the digest before signing (domain separation).
pub const SIGNING_CONTEXT: &[u8] = b"driftwatch baseline v1\0";

/// Why a key could not be read or written.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The PEM text is not a PKCS#8 ed25519 private key.
    #[error("not a PKCS#8 PEM ed25519 private key: {0}")]
    PrivateKey(String),
    /// The PEM text is not an SPKI ed25519 public key.
    #[error("not a PEM ed25519 public key: {0}")]
    PublicKey(String),
}

/// A pipeline signing key.
pub struct PrivateKey(SigningKey);

/// A public key that verifies baselines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PrivateKey {
    /// Builds a key from 32 random bytes (the caller supplies the randomness, so this
    /// crate needs no RNG).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        PrivateKey(SigningKey::from_bytes(&seed))
    }

    /// Parses a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(PrivateKey)
            .map_err(|e| KeyError::PrivateKey(e.to_string()))
    }

    /// Encodes the key as PKCS#8 PEM.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|e| KeyError::PrivateKey(e.to_string()))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs a baseline digest.
    pub fn sign_digest(&self, digest: &[u8; 32]) -> [u8; 64] {
        self.0.sign(&signed_message(digest)).to_bytes()
    }
}

impl PublicKey {
    /// Parses an SPKI PEM public key.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        VerifyingKey::from_public_key_pem(pem)
            .map(PublicKey)
            .map_err(|e| KeyError::PublicKey(e.to_string()))
    }

    /// Builds a key from its 32 raw bytes, as embedded in a baseline.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|e| KeyError::PublicKey(e.to_string()))
    }

    /// Encodes the key as SPKI PEM.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::PublicKey(e.to_string()))
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// A short, stable name for the key: `ed25519:` and the first 16 hex digits of the
    /// BLAKE3 hash of its raw bytes.
    pub fn fingerprint(&self) -> String {
        let hash = blake3::hash(&self.to_bytes());
        format!("ed25519:{}", &hash.to_hex()[..16])
    }

    /// Verifies a signature over a baseline digest (strict: rejects malleable forms).
    pub fn verify_digest(&self, digest: &[u8; 32], signature: &[u8; 64]) -> bool {
        self.0
            .verify_strict(&signed_message(digest), &Signature::from_bytes(signature))
            .is_ok()
    }
}

fn signed_message(digest: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + digest.len());
    message.extend_from_slice(SIGNING_CONTEXT);
    message.extend_from_slice(digest);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_verify() {
        let key = PrivateKey::from_seed([42; 32]);
        let again = PrivateKey::from_pem(&key.to_pem().unwrap()).unwrap();
        let public = PublicKey::from_pem(&key.public_key().to_pem().unwrap()).unwrap();
        assert_eq!(public, again.public_key());
        let digest = [1u8; 32];
        let signature = key.sign_digest(&digest);
        assert!(public.verify_digest(&digest, &signature));
        assert!(!public.verify_digest(&[2u8; 32], &signature));
        let other = PrivateKey::from_seed([43; 32]).public_key();
        assert!(!other.verify_digest(&digest, &signature));
    }

    #[test]
    fn garbage_pem_is_an_error() {
        assert!(PrivateKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n").is_err());
        assert!(PublicKey::from_pem("hello").is_err());
    }
}
