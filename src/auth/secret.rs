use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::config::Config;

const DEV_SECRET_FILE: &str = "jwt_secret";

/// Where the signing secret came from, so start-up can warn about a development secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    Environment,
    Development,
}

/// The fewest bytes a `JWT_SECRET` should have: HS256's own output size. A shorter secret is
/// accepted (the original service's secret must keep working), with a warning: anyone holding
/// one token can try candidate secrets offline, and a short one falls to guessing.
pub const MIN_SECRET_BYTES: usize = 32;

/// The warning a short `JWT_SECRET` deserves, if it is one.
pub fn short_secret_warning(secret: &[u8], source: SecretSource) -> Option<String> {
    (source == SecretSource::Environment && secret.len() < MIN_SECRET_BYTES).then(|| {
        format!(
            "JWT_SECRET is {} bytes, shorter than {MIN_SECRET_BYTES}: whoever holds one token can \
             guess it offline; use {MIN_SECRET_BYTES} random bytes or more (openssl rand -hex 32)",
            secret.len()
        )
    })
}

/// `JWT_SECRET`, or else the development secret kept in `DATA_DIR` (created on first use, so
/// that `chatd token` and the server agree).
pub fn resolve_secret(config: &Config) -> std::io::Result<(Vec<u8>, SecretSource)> {
    if let Some(secret) = &config.jwt_secret {
        return Ok((secret.clone().into_bytes(), SecretSource::Environment));
    }
    fs::create_dir_all(&config.data_dir)?;
    let path = config.data_dir.join(DEV_SECRET_FILE);
    let secret = read_or_create(&path)?;
    Ok((secret, SecretSource::Development))
}

fn read_or_create(path: &Path) -> std::io::Result<Vec<u8>> {
    let fresh: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(fresh.as_bytes())?;
            file.sync_all()?;
            Ok(fresh.into_bytes())
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let stored = fs::read_to_string(path)?;
            let stored = stored.trim();
            if stored.is_empty() {
                return Err(std::io::Error::other(format!(
                    "{} is empty: delete it to generate a new development secret",
                    path.display()
                )));
            }
            Ok(stored.as_bytes().to_vec())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_secret_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEV_SECRET_FILE);
        let first = read_or_create(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(read_or_create(&path).unwrap(), first);
        let mode = fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
}
