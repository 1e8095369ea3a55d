//! Start-up checks that keep secrets secret.
//!
//! A merchant private key signs money movements; a copy of it readable by every
//! account on the host is a key anyone there can use. With real providers (mock mode
//! off) payd refuses to start when a private key file is world-readable, naming the
//! file and the fix — never its contents. (The placeholder JWT secret is refused by
//! the configuration itself.)

use std::path::Path;

use crate::config::Config;

/// Refuses world-readable private key files when mock mode is off.
pub fn check_key_files(config: &Config) -> anyhow::Result<()> {
    if config.payment.mock_mode {
        return Ok(());
    }
    let keys = [
        (
            "wechat.private_key_path",
            config.wechat.private_key_path.as_deref(),
        ),
        (
            "alipay.private_key_path",
            config.alipay.private_key_path.as_deref(),
        ),
    ];
    let problems: Vec<String> = keys
        .iter()
        .filter_map(|(key, path)| path.and_then(|p| world_readable(key, p)))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", problems.join("; "))
    }
}

/// A one-line complaint when `path` is readable by every user.
#[cfg(unix)]
fn world_readable(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "{key}: {} is readable by every user (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        )
    })
}

#[cfg(not(unix))]
fn world_readable(_key: &str, _path: &Path) -> Option<String> {
    None
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_world_readable_key_is_named_and_a_private_one_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apiclient_key.pem");
        std::fs::write(&path, "-----BEGIN PRIVATE KEY-----\nsecret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let complaint = world_readable("wechat.private_key_path", &path).unwrap();
        assert!(
            complaint.contains("chmod 600") && complaint.contains("644"),
            "{complaint}"
        );
        assert!(!complaint.contains("secret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(world_readable("wechat.private_key_path", &path), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(world_readable("wechat.private_key_path", &path), None);
    }
}
