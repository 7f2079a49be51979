//! [`FileStore`]: uploaded files in the data directory, published
//! atomically.
//!
//! ```text
//!   DATA/
//!     jwt.secret                the token secret (hex, mode 0600)
//!     tmp/<random>/content      an upload in progress, written chunk by chunk
//!     files/<id>/content        a finished upload (renamed from tmp/ in one step)
//!     files/<id>/meta.json      {"filename","mimetype","bytes","sha256"}
//! ```
//!
//! | upload event      | store                                              |
//! |-------------------|----------------------------------------------------|
//! | `upload` request  | [`FileStore::begin_upload`]: `tmp/<random>/` created |
//! | each chunk        | [`PendingUpload::write`] appends                    |
//! | `endstream`, checksum ok | [`PendingUpload::commit`]: sync, meta written, directory renamed to `files/<id>` |
//! | failure, disconnect | [`PendingUpload::discard`] (or drop) removes `tmp/<random>/` |
//!
//! A file id is 24 lower-case hex digits (12 random bytes, the shape of a
//! MongoDB ObjectId that OpenFlow uses). Stored names are fixed
//! (`content`, `meta.json`), so the uploaded filename is metadata only and
//! cannot reach the file system; it is still cut to its base name and
//! checked, because clients use it as a local name when they download.
//! Leftovers in `tmp/` from a crashed run are removed at start.

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::auth::random_bytes;

/// Longest filename accepted, in bytes (the common file system limit).
pub const MAX_FILENAME_LEN: usize = 255;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The uploaded filename is not usable as a plain file name.
    #[error("filename {name:?} is invalid: {reason}")]
    InvalidFilename {
        /// The name as given (cut to 300 characters).
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// No stored file has this id (or the id is not 24 hex digits).
    #[error("no file with id {id:?}")]
    NotFound {
        /// The id asked for (cut to 100 characters).
        id: String,
    },
    /// The file system failed.
    #[error("storage io at {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Cuts `name` to its base name and checks it: no NUL or control
/// characters, not empty, `.` or `..`, at most [`MAX_FILENAME_LEN`] bytes.
///
/// # Errors
///
/// [`StoreError::InvalidFilename`].
pub fn sanitize_filename(name: &str) -> Result<String, StoreError> {
    let refuse = |reason| StoreError::InvalidFilename {
        name: name.chars().take(300).collect(),
        reason,
    };
    if name.chars().any(char::is_control) {
        return Err(refuse("control characters or NUL"));
    }
    let base = name.rsplit(['/', '\\']).next().unwrap_or("").trim();
    match base {
        "" => Err(refuse("empty base name")),
        "." | ".." => Err(refuse("not a file name")),
        _ if base.len() > MAX_FILENAME_LEN => Err(refuse("longer than 255 bytes")),
        _ => Ok(base.to_owned()),
    }
}

/// A guess of the MIME type from the file extension, as the server does
/// when the upload names none.
pub fn guess_mimetype(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("txt" | "log") => "text/plain",
        Some("json") => "application/json",
        Some("csv") => "text/csv",
        Some("html" | "htm") => "text/html",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("pdf") => "application/pdf",
        Some("zip") => "application/zip",
        _ => "application/octet-stream",
    }
}

fn is_file_id(id: &str) -> bool {
    id.len() == 24
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_hex(bytes: usize) -> io::Result<String> {
    Ok(random_bytes(bytes)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// What is known about a stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// The file id.
    pub id: String,
    /// The sanitized base name it was uploaded under.
    pub filename: String,
    /// Its MIME type.
    pub mimetype: String,
    /// Its length.
    pub bytes: u64,
    /// SHA-256 of its content, lower-case hex.
    pub sha256: String,
}

/// The upload area of the data directory. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct FileStore {
    files: PathBuf,
    tmp: PathBuf,
}

impl FileStore {
    /// Opens (creating) `root/files` and `root/tmp`, and empties `tmp`.
    ///
    /// # Errors
    ///
    /// The directories cannot be created or cleaned.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let files = root.join("files");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&files).map_err(io_at(&files))?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_at(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_at(&tmp))?;
        Ok(Self { files, tmp })
    }

    /// Starts an upload under a private temporary directory.
    ///
    /// # Errors
    ///
    /// An invalid filename, or the file system failed.
    pub async fn begin_upload(
        &self,
        filename: &str,
        mimetype: &str,
    ) -> Result<PendingUpload, StoreError> {
        let filename = sanitize_filename(filename)?;
        let mimetype = match mimetype.trim() {
            "" => guess_mimetype(&filename).to_owned(),
            given => given.chars().take(255).collect(),
        };
        let dir = self.tmp.join(random_hex(16).map_err(io_at(&self.tmp))?);
        tokio::fs::create_dir(&dir).await.map_err(io_at(&dir))?;
        let path = dir.join("content");
        let file = match tokio::fs::File::create(&path).await {
            Ok(file) => file,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(StoreError::Io { path, source: e });
            }
        };
        Ok(PendingUpload {
            dir: Some(dir),
            file: Some(file),
            filename,
            mimetype,
            bytes: 0,
            files: self.files.clone(),
        })
    }

    /// The metadata of file `id`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] for an unknown or malformed id.
    pub async fn meta(&self, id: &str) -> Result<FileMeta, StoreError> {
        let not_found = || StoreError::NotFound {
            id: id.chars().take(100).collect(),
        };
        if !is_file_id(id) {
            return Err(not_found());
        }
        let path = self.files.join(id).join("meta.json");
        let text = tokio::fs::read(&path).await.map_err(|_| not_found())?;
        let value: serde_json::Value = serde_json::from_slice(&text).map_err(|_| not_found())?;
        let text_field = |key: &str| {
            value
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(not_found)
        };
        Ok(FileMeta {
            id: id.to_owned(),
            filename: text_field("filename")?,
            mimetype: text_field("mimetype")?,
            sha256: text_field("sha256")?,
            bytes: value
                .get("bytes")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(not_found)?,
        })
    }

    /// Finds the newest file uploaded under `filename` (its base name).
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`].
    pub async fn find_by_name(&self, filename: &str) -> Result<FileMeta, StoreError> {
        let not_found = || StoreError::NotFound {
            id: filename.chars().take(100).collect(),
        };
        let wanted = sanitize_filename(filename).map_err(|_| not_found())?;
        let mut entries = tokio::fs::read_dir(&self.files)
            .await
            .map_err(io_at(&self.files))?;
        let mut best: Option<(std::time::SystemTime, FileMeta)> = None;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(meta) = self.meta(&id).await else {
                continue;
            };
            let modified = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            if meta.filename == wanted && best.as_ref().is_none_or(|(t, _)| modified > *t) {
                best = Some((modified, meta));
            }
        }
        best.map(|(_, meta)| meta).ok_or_else(not_found)
    }

    /// Opens the content of file `id` for reading.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], or the file system failed.
    pub async fn open_content(&self, id: &str) -> Result<tokio::fs::File, StoreError> {
        if !is_file_id(id) {
            return Err(StoreError::NotFound {
                id: id.chars().take(100).collect(),
            });
        }
        let path = self.files.join(id).join("content");
        tokio::fs::File::open(&path).await.map_err(io_at(&path))
    }
}

/// An upload being written. Dropping it without
/// [`commit`](Self::commit) removes its temporary directory.
#[derive(Debug)]
pub struct PendingUpload {
    dir: Option<PathBuf>,
    file: Option<tokio::fs::File>,
    filename: String,
    mimetype: String,
    bytes: u64,
    files: PathBuf,
}

impl PendingUpload {
    /// The sanitized filename.
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The temporary directory (for tests and logs).
    pub fn temp_dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Appends one chunk.
    ///
    /// # Errors
    ///
    /// The file system failed.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let (Some(file), Some(dir)) = (self.file.as_mut(), self.dir.as_ref()) else {
            return Ok(());
        };
        file.write_all(data).await.map_err(io_at(dir))?;
        self.bytes = self
            .bytes
            .saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
        Ok(())
    }

    /// Publishes the upload under a new id: syncs the content, writes the
    /// metadata, renames the directory into `files/`.
    ///
    /// # Errors
    ///
    /// The file system failed; the temporary directory is then removed.
    pub async fn commit(mut self, sha256: &str) -> Result<FileMeta, StoreError> {
        let result = self.publish(sha256).await;
        self.remove_temp();
        result
    }

    async fn publish(&mut self, sha256: &str) -> Result<FileMeta, StoreError> {
        let Some(dir) = self.dir.clone() else {
            return Err(StoreError::Io {
                path: self.files.clone(),
                source: io::Error::other("upload already finished"),
            });
        };
        if let Some(mut file) = self.file.take() {
            file.flush().await.map_err(io_at(&dir))?;
            file.sync_all().await.map_err(io_at(&dir))?;
        }
        let id = random_hex(12).map_err(io_at(&dir))?;
        let meta = FileMeta {
            id: id.clone(),
            filename: self.filename.clone(),
            mimetype: self.mimetype.clone(),
            bytes: self.bytes,
            sha256: sha256.to_owned(),
        };
        let json = serde_json::json!({
            "filename": meta.filename,
            "mimetype": meta.mimetype,
            "bytes": meta.bytes,
            "sha256": meta.sha256,
        });
        let meta_path = dir.join("meta.json");
        tokio::fs::write(&meta_path, json.to_string())
            .await
            .map_err(io_at(&meta_path))?;
        let target = self.files.join(&id);
        tokio::fs::rename(&dir, &target)
            .await
            .map_err(io_at(&target))?;
        self.dir = None;
        Ok(meta)
    }

    /// Abandons the upload and removes what was written.
    pub async fn discard(mut self) {
        self.file = None;
        if let Some(dir) = self.dir.take() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
    }

    fn remove_temp(&mut self) {
        self.file = None;
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

impl Drop for PendingUpload {
    fn drop(&mut self) {
        self.remove_temp();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn temp_root(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("openiap-store-{tag}-{}", random_hex(6).unwrap()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sanitize_keeps_the_base_name() {
        assert_eq!(sanitize_filename("a.bin").unwrap(), "a.bin");
        assert_eq!(sanitize_filename("/etc/passwd").unwrap(), "passwd");
        assert_eq!(sanitize_filename("..\\..\\win.ini").unwrap(), "win.ini");
        assert_eq!(sanitize_filename("x/../../y.txt").unwrap(), "y.txt");
    }

    #[test]
    fn sanitize_refuses_nul_dots_and_empty() {
        for bad in ["", "a/", "..", "a/..", ".", "a\0b", "tab\there"] {
            assert!(
                matches!(
                    sanitize_filename(bad),
                    Err(StoreError::InvalidFilename { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(sanitize_filename(&"x".repeat(256)).is_err());
    }

    #[test]
    fn mimetype_is_guessed_from_extension() {
        assert_eq!(guess_mimetype("a.JSON"), "application/json");
        assert_eq!(guess_mimetype("noext"), "application/octet-stream");
    }

    #[test]
    fn malformed_ids_are_not_found() {
        let root = temp_root("ids");
        let store = FileStore::open(&root).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for id in ["../../etc", "", "ABCDEF0123456789ABCDEF01", "0123"] {
            assert!(matches!(
                rt.block_on(store.meta(id)),
                Err(StoreError::NotFound { .. })
            ));
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn committed_upload_is_found_and_temp_is_gone() {
        let root = temp_root("commit");
        let store = FileStore::open(&root).unwrap();
        let mut upload = store.begin_upload("dir/hello.txt", "").await.unwrap();
        let temp = upload.temp_dir().unwrap().to_owned();
        upload.write(b"hello ").await.unwrap();
        upload.write(b"world").await.unwrap();
        let meta = upload.commit("ab").await.unwrap();
        assert!(!temp.exists());
        assert_eq!(meta.bytes, 11);
        assert_eq!(meta.mimetype, "text/plain");
        assert_eq!(store.meta(&meta.id).await.unwrap(), meta);
        assert_eq!(store.find_by_name("hello.txt").await.unwrap(), meta);
        let content = std::fs::read(root.join("files").join(&meta.id).join("content")).unwrap();
        assert_eq!(content, b"hello world");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn dropped_upload_leaves_nothing() {
        let root = temp_root("drop");
        let store = FileStore::open(&root).unwrap();
        let mut upload = store.begin_upload("a.bin", "").await.unwrap();
        upload.write(&[1, 2, 3]).await.unwrap();
        drop(upload);
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(root.join("files")).unwrap().count(), 0);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn open_cleans_leftovers_of_a_crash() {
        let root = temp_root("crash");
        std::fs::create_dir_all(root.join("tmp").join("old")).unwrap();
        FileStore::open(&root).unwrap();
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        std::fs::remove_dir_all(root).unwrap();
    }

    proptest! {
        #[test]
        fn sanitized_names_are_plain(name in "\\PC{0,80}") {
            if let Ok(clean) = sanitize_filename(&name) {
                prop_assert!(!clean.contains(['/', '\\', '\0']));
                prop_assert!(clean != "." && clean != ".." && !clean.is_empty());
            }
        }
    }
}
