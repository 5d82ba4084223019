//! The node's data directory: its identity, last incarnation and its own
//! keys, written so that a crash at any moment leaves either the old file or
//! the new one.

pub use gossip_member::StoredKeys;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gossip_core::Incarnation;
use gossip_transport_quic::NodeCredentials;

use crate::error::Error;

const CERT_FILE: &str = "node.crt";
const KEY_FILE: &str = "node.key";
const INCARNATION_FILE: &str = "incarnation";
const KEYS_FILE: &str = "keys";
/// Locked while a node runs on the directory.
const LOCK_FILE: &str = "lock";
/// A keys file larger than this is refused rather than read: it is far above
/// what the key/value limits allow one node to hold.
const MAX_KEYS_FILE_BYTES: u64 = 256 << 20;

/// A node's data directory, locked while it is open: two processes never
/// run on one directory (two live instances of one identity would take
/// turns overwriting its incarnation and keys, and fight over its address).
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
    /// The locked file; the lock lasts as long as any clone holds it, and
    /// the operating system releases it when the process ends, however.
    _lock: Arc<fs::File>,
}

impl DataDir {
    /// Opens `path`, creating it (readable by the owner only) if needed,
    /// and locks it until the last clone of the returned value is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::DataDirLocked`] if another process (or another `DataDir` of
    /// this one) holds it; [`Error::DataDir`] if it cannot be created or
    /// locked.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        fs::create_dir_all(&path).map_err(|source| io_error(&path, source))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
                .map_err(|source| io_error(&path, source))?;
        }
        let lock_path = path.join(LOCK_FILE);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| io_error(&lock_path, source))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::DataDirLocked { path }),
            Err(fs::TryLockError::Error(source)) => return Err(io_error(&lock_path, source)),
        }
        Ok(DataDir {
            path,
            _lock: Arc::new(lock),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credentials to run with: `configured` (stored here on first use,
    /// and checked against what is stored on later ones), or those stored.
    ///
    /// # Errors
    ///
    /// [`Error::IdentityMismatch`], [`Error::NoCredentials`],
    /// [`Error::DataDir`], and unreadable stored files as
    /// [`Error::Transport`].
    pub fn credentials(
        &self,
        configured: Option<NodeCredentials>,
    ) -> Result<NodeCredentials, Error> {
        let cert = self.path.join(CERT_FILE);
        let key = self.path.join(KEY_FILE);
        let stored = if cert.exists() && key.exists() {
            Some(NodeCredentials::load(&cert, &key)?)
        } else {
            None
        };
        match (configured, stored) {
            (Some(configured), Some(stored)) => {
                if configured.node_id() != stored.node_id() {
                    return Err(Error::IdentityMismatch {
                        path: self.path.clone(),
                        stored: stored.node_id(),
                        configured: configured.node_id(),
                    });
                }
                // The same key with a renewed certificate: keep the new one.
                if configured.to_pem() != stored.to_pem() {
                    self.store_credentials(&configured)?;
                }
                Ok(configured)
            }
            (Some(configured), None) => {
                self.store_credentials(&configured)?;
                Ok(configured)
            }
            (None, Some(stored)) => Ok(stored),
            (None, None) => Err(Error::NoCredentials),
        }
    }

    /// Writes the certificate and key, each crash-safely.
    fn store_credentials(&self, credentials: &NodeCredentials) -> Result<(), Error> {
        let (cert, key) = credentials.to_pem();
        self.replace_file(KEY_FILE, &key)?;
        self.replace_file(CERT_FILE, &cert)
    }

    /// Replaces `name` with `contents` so that a crash leaves the old file or
    /// the new one, never a torn one: written to a temporary file readable by
    /// the owner only, synced, renamed over the old one, the directory synced.
    fn replace_file(&self, name: &str, contents: impl AsRef<[u8]>) -> Result<(), Error> {
        let path = self.path.join(name);
        let temporary = self.path.join(format!("{name}.tmp"));
        gossip_transport_quic::write_private(&temporary, contents)?;
        let finish = || -> std::io::Result<()> {
            fs::File::open(&temporary)?.sync_all()?;
            fs::rename(&temporary, &path)?;
            fs::File::open(&self.path)?.sync_all()
        };
        finish().map_err(|source| io_error(&path, source))
    }

    /// The incarnation stored by the last run, if any.
    ///
    /// # Errors
    ///
    /// [`Error::DataDir`] if the file exists but cannot be read or parsed.
    pub fn last_incarnation(&self) -> Result<Option<Incarnation>, Error> {
        let path = self.path.join(INCARNATION_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|value| *value <= Incarnation::MAX.get())
                .map(|value| Some(Incarnation::new(value)))
                .ok_or_else(|| {
                    io_error(
                        &path,
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "not an incarnation number; delete the file to start at 0",
                        ),
                    )
                }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io_error(&path, source)),
        }
    }

    /// Stores `incarnation`, crash-safely.
    ///
    /// # Errors
    ///
    /// [`Error::DataDir`].
    pub fn store_incarnation(&self, incarnation: Incarnation) -> Result<(), Error> {
        self.replace_file(INCARNATION_FILE, format!("{}\n", incarnation.get()))
    }

    /// The node's own keys as stored by the last run, if any.
    ///
    /// # Errors
    ///
    /// [`Error::DataDir`] if the file exists but cannot be read or decoded
    /// (delete it to start with no keys).
    pub fn last_keys(&self) -> Result<Option<StoredKeys>, Error> {
        let path = self.path.join(KEYS_FILE);
        let invalid = |why: &str| {
            io_error(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{why}; delete the file to start with no keys"),
                ),
            )
        };
        match fs::metadata(&path) {
            Ok(meta) if meta.len() > MAX_KEYS_FILE_BYTES => {
                return Err(invalid("larger than any node's keys can be"));
            }
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_error(&path, source)),
        }
        let bytes = fs::read(&path).map_err(|source| io_error(&path, source))?;
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|_| invalid("not a keys file"))
    }

    /// Stores the node's own keys, crash-safely.
    ///
    /// # Errors
    ///
    /// [`Error::DataDir`].
    pub fn store_keys(&self, keys: &StoredKeys) -> Result<(), Error> {
        let bytes = postcard::to_allocvec(keys).map_err(|err| {
            io_error(
                &self.path.join(KEYS_FILE),
                std::io::Error::new(std::io::ErrorKind::InvalidData, err.to_string()),
            )
        })?;
        self.replace_file(KEYS_FILE, bytes)
    }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::DataDir {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossip_transport_quic::{ClusterCa, Validity};
    use std::time::Duration;

    #[test]
    fn identity_and_incarnation_survive_a_reopen_and_another_identity_is_refused() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca = ClusterCa::generate("t").expect("ca");
        let validity = Validity::for_duration(Duration::from_secs(3600));
        let me = ca.issue("a", validity).expect("issue");
        let data = DataDir::open(dir.path().join("node")).expect("open");
        assert_eq!(data.last_incarnation().expect("read"), None);
        assert!(matches!(data.credentials(None), Err(Error::NoCredentials)));
        let id = data.credentials(Some(me.clone())).expect("store").node_id();
        data.store_incarnation(Incarnation::new(7)).expect("store");

        drop(data);
        let reopened = DataDir::open(dir.path().join("node")).expect("reopen");
        assert_eq!(reopened.credentials(None).expect("load").node_id(), id);
        assert_eq!(
            reopened.last_incarnation().expect("read"),
            Some(Incarnation::new(7))
        );
        let other = ca.issue("b", validity).expect("issue");
        assert!(matches!(
            reopened.credentials(Some(other)),
            Err(Error::IdentityMismatch { .. })
        ));

        std::fs::write(reopened.path().join(INCARNATION_FILE), "garbage").expect("write");
        assert!(matches!(
            reopened.last_incarnation(),
            Err(Error::DataDir { .. })
        ));
    }

    #[test]
    fn a_directory_in_use_is_refused_until_it_is_released() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let first = DataDir::open(dir.path().join("node")).expect("open");
        let clone = first.clone();
        let second = DataDir::open(dir.path().join("node"));
        assert!(
            matches!(&second, Err(Error::DataDirLocked { path }) if path == first.path()),
            "{second:?}"
        );
        drop(first);
        assert!(
            matches!(
                DataDir::open(dir.path().join("node")),
                Err(Error::DataDirLocked { .. })
            ),
            "a clone still holds the lock"
        );
        drop(clone);
        DataDir::open(dir.path().join("node")).expect("released with the last clone");
    }
}
