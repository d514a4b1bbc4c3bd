//! `driftwatch key generate`.

use crate::baseline::write_new_file;
use crate::cli::KeyGenerateArgs;
use crate::error::{Error, Result};
use driftwatch_protocol::sign::PrivateKey;
use std::io::Write;

/// Generates a key pair; the private key is written with mode 0600 and neither file
/// may exist already.
pub fn generate(args: &KeyGenerateArgs, out: &mut impl Write) -> Result<()> {
    let mut seed = [0u8; 32];
    driftwatch_protocol::random::fill(&mut seed).map_err(|e| Error::KeyFile {
        action: "generate",
        path: args.private.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let key = PrivateKey::from_seed(seed);
    let key_error = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| Error::Key { path, source }
    };
    let private_pem = key.to_pem().map_err(key_error(&args.private))?;
    let public_pem = key.public_key().to_pem().map_err(key_error(&args.public))?;
    write_new_file(&args.private, &private_pem, 0o600)?;
    write_new_file(&args.public, &public_pem, 0o644)?;
    writeln!(
        out,
        "Generated {} (private: {}, public: {})",
        key.public_key().fingerprint(),
        args.private.display(),
        args.public.display()
    )?;
    Ok(())
}
