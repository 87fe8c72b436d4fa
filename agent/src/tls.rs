//! TLS plumbing shared by everything in the agent that opens a TLS connection.

/// Installs ring as the process's rustls crypto provider. DESIGN §6 allows exactly one
/// provider in the tree; installing it explicitly keeps rustls from guessing. Idempotent.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
