//! `qalqan evidence …`: checking an evidence package on the recipient's machine, with no
//! database and no network.

use std::path::PathBuf;

use clap::Subcommand;
use qalqan_atlas::evidence::verify;

#[derive(Subcommand)]
pub enum EvidenceCmd {
    /// Check an evidence package (the .tar file, or the folder it was unpacked into): every
    /// file's SHA-256 against manifest.json, the custody log's hash chain, and the timestamp
    /// token's message imprint. Exits 1 and names every changed, missing or extra file.
    Verify {
        /// The package.
        package: PathBuf,
    },
}

pub fn run(cmd: EvidenceCmd) -> anyhow::Result<()> {
    match cmd {
        EvidenceCmd::Verify { package } => {
            let r = verify::verify_path(&package)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", package.display()))?;
            if r.ok() {
                let stamp = match &r.timestamp {
                    Some(t) => format!(
                        "{t} (RFC 3161 token matches manifest.json; check its signature with openssl ts -verify, see VERIFY.txt)"
                    ),
                    None => "none".to_string(),
                };
                println!(
                    "OK: {} files verified, custody chain intact ({} entries), timestamp: {stamp}",
                    r.files_ok, r.custody_entries
                );
                if let Some(c) = &r.created_at {
                    println!("package created {c}");
                }
                if let Some(m) = &r.manifest_sha256 {
                    println!(
                        "manifest.json SHA-256: {m} (compare with the value the sender gave you separately)"
                    );
                }
                Ok(())
            } else {
                for p in &r.problems {
                    println!("FAILED: {p}");
                }
                anyhow::bail!(
                    "{}: verification failed ({} problems, {} of {} files intact)",
                    package.display(),
                    r.problems.len(),
                    r.files_ok,
                    r.files
                )
            }
        }
    }
}
