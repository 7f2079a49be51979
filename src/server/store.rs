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
//! | `beginstream`     | [`PendingUpload::set_hash`]: the announced checksum to check |
//! | each chunk        | [`PendingUpload::write`] appends (hashed and written behind on the blocking pool) |
//! | `endstream`       | [`PendingUpload::commit`]: sync, checksum checked, meta written, directory renamed to `files/<id>` |
//! | failure, disconnect | [`PendingUpload::discard`] (or drop) removes `tmp/<random>/` |
//! | crash (SIGKILL, power loss), then restart | [`FileStore::open`]: `tmp/` emptied, incomplete `files/<id>/` removed |
//!
//! A file id is 24 lower-case hex digits (12 random bytes, the shape of a
//! MongoDB ObjectId that OpenFlow uses). Stored names are fixed
//! (`content`, `meta.json`), so the uploaded filename is metadata only and
//! cannot reach the file system; it is still cut to its base name and
//! checked, because clients use it as a local name when they download.
//!
//! A file becomes visible only by the rename into `files/`, after its
//! content and metadata were synced, and the rename itself is synced (the
//! `files/` directory), so a killed server never shows a partial file: what
//! it left in `tmp/` is removed at the next start, and a `files/<id>/`
//! whose metadata is missing or unreadable or whose content length differs
//! from it (possible only after a power loss or outside interference) is
//! removed too ([`FileStore::open`]).

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::auth::random_bytes;
use crate::file_io::FileWriter;
use crate::stream::{PayloadHash, StreamError};

/// Longest filename accepted, in bytes (the common file system limit).
pub const MAX_FILENAME_LEN: usize = 255;

/// Received bytes of one upload that may wait for the disk:
/// [`PendingUpload::write`] returns at once below this backlog and waits
/// for the disk above it, so the session stops reading its connection until
/// the disk catches up.
pub const UPLOAD_WRITE_BEHIND: usize = 4 * 1024 * 1024;

/// An upload asks the disk to write back what it has every this many bytes
/// (`fdatasync` in the background), so the sync in
/// [`PendingUpload::commit`] has little left.
pub const UPLOAD_SYNC_EVERY: u64 = 32 * 1024 * 1024;

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
    /// The uploaded payload failed its check
    /// ([`StreamError::ChecksumMismatch`]); nothing was stored.
    #[error(transparent)]
    Payload(#[from] StreamError),
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

/// Reads `meta.json` of file `id`; `None` when it is not the JSON object
/// [`PendingUpload::commit`] writes.
fn parse_meta(id: &str, text: &[u8]) -> Option<FileMeta> {
    let value: serde_json::Value = serde_json::from_slice(text).ok()?;
    let text_field = |key: &str| value.get(key)?.as_str().map(str::to_owned);
    Some(FileMeta {
        id: id.to_owned(),
        filename: text_field("filename")?,
        mimetype: text_field("mimetype")?,
        sha256: text_field("sha256")?,
        bytes: value.get("bytes")?.as_u64()?,
    })
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
    /// Opens (creating) `root/files` and `root/tmp`, and recovers from a
    /// crash: empties `tmp` (uploads that never finished) and removes every
    /// `files/<id>/` that is not complete (see the [module docs](self)).
    /// Entries of `files/` not named like an id are left alone.
    ///
    /// # Errors
    ///
    /// The directories cannot be created, read or cleaned.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let files = root.join("files");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&files).map_err(io_at(&files))?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_at(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_at(&tmp))?;
        let store = Self { files, tmp };
        store.remove_incomplete()?;
        Ok(store)
    }

    /// Removes the `files/<id>/` directories whose metadata is missing or
    /// unreadable or whose content length differs from the metadata;
    /// returns how many.
    fn remove_incomplete(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.files).map_err(io_at(&self.files))? {
            let entry = entry.map_err(io_at(&self.files))?;
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let dir = entry.path();
            if !is_file_id(&id) || !dir.is_dir() {
                continue;
            }
            let meta = std::fs::read(dir.join("meta.json"))
                .ok()
                .and_then(|text| parse_meta(&id, &text));
            let content_len = std::fs::metadata(dir.join("content"))
                .ok()
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len());
            let complete =
                matches!((meta, content_len), (Some(meta), Some(len)) if meta.bytes == len);
            if !complete {
                std::fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
                removed += 1;
            }
        }
        Ok(removed)
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
            Ok(file) => file.into_std().await,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(StoreError::Io { path, source: e });
            }
        };
        let mut writer = FileWriter::new(file, UPLOAD_SYNC_EVERY);
        writer.set_hash(PayloadHash::default());
        Ok(PendingUpload {
            dir: Some(dir),
            writer,
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
        parse_meta(id, &text).ok_or_else(not_found)
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

    /// Opens the content of file `id` for reading (a `std` file: the
    /// session reads it in chunks on the blocking pool, straight into each
    /// chunk's own buffer).
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], or the file system failed.
    pub async fn open_content(&self, id: &str) -> Result<std::fs::File, StoreError> {
        if !is_file_id(id) {
            return Err(StoreError::NotFound {
                id: id.chars().take(100).collect(),
            });
        }
        let path = self.files.join(id).join("content");
        let file = tokio::fs::File::open(&path).await.map_err(io_at(&path))?;
        Ok(file.into_std().await)
    }
}

/// An upload being written. Dropping it without
/// [`commit`](Self::commit) removes its temporary directory.
///
/// Chunks are written behind (by the crate's file writer, shared with the
/// client's download): [`write`](Self::write) queues the chunk's own bytes
/// (no copy) and one write of everything queued runs at a time on the
/// blocking pool, with `std::fs` (tokio's file would copy every chunk into
/// a buffer of its own). At most [`UPLOAD_WRITE_BEHIND`] bytes
/// wait for the disk; every [`UPLOAD_SYNC_EVERY`] bytes a background
/// `fdatasync` starts. The thread that writes a chunk hashes it first, and
/// [`commit`](Self::commit) checks the digest against the one announced
/// ([`set_hash`](Self::set_hash)).
pub struct PendingUpload {
    dir: Option<PathBuf>,
    /// The content file, written behind.
    writer: FileWriter,
    filename: String,
    mimetype: String,
    /// Bytes received ([`write`](Self::write) calls).
    bytes: u64,
    files: PathBuf,
}

impl std::fmt::Debug for PendingUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingUpload")
            .field("dir", &self.dir)
            .field("filename", &self.filename)
            .field("mimetype", &self.mimetype)
            .field("bytes", &self.bytes)
            .field("backlog", &self.backlog())
            .finish_non_exhaustive()
    }
}

impl PendingUpload {
    /// The sanitized filename.
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// Bytes received so far (some may still wait for the disk).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes received and not yet written.
    pub fn backlog(&self) -> usize {
        self.writer.backlog()
    }

    /// The temporary directory (for tests and logs).
    pub fn temp_dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Sets the hash that checks the payload: the one of its `beginstream`
    /// ([`StreamStarted::payload_hash`](crate::stream::StreamStarted::payload_hash)).
    /// Call it before the first [`write`](Self::write); until then the
    /// upload is hashed without a digest to match.
    pub fn set_hash(&mut self, hash: PayloadHash) {
        self.writer.set_hash(hash);
    }

    /// Appends one chunk: queues it for the disk and returns, unless more
    /// than [`UPLOAD_WRITE_BEHIND`] bytes are waiting, then waits until
    /// the disk caught up below that.
    ///
    /// # Errors
    ///
    /// The file system failed (this chunk's write or an earlier one).
    pub async fn write(&mut self, data: Bytes) -> Result<(), StoreError> {
        if self.dir.is_none() {
            return Ok(());
        }
        self.bytes = self
            .bytes
            .saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
        let dir = self.dir.clone().unwrap_or_else(|| self.files.clone());
        self.writer
            .write_behind(data, UPLOAD_WRITE_BEHIND)
            .await
            .map_err(io_at(&dir))
    }

    /// Waits for the write in flight, if any (cancel-safe: a dropped wait
    /// leaves it in flight), and starts writing what was queued meanwhile.
    /// For a caller that bounds the backlog of several uploads together.
    ///
    /// # Errors
    ///
    /// The file system failed.
    pub async fn wait(&mut self) -> Result<(), StoreError> {
        let dir = self.dir.clone().unwrap_or_else(|| self.files.clone());
        self.writer.wait().await.map_err(io_at(&dir))
    }

    /// Publishes the upload under a new id: syncs the content, checks its
    /// digest (errors name `rid`, the upload's request id), writes and
    /// syncs the metadata, renames the directory into `files/` and syncs
    /// `files/` (on Unix), so that after a crash the file is either
    /// complete or absent.
    ///
    /// # Errors
    ///
    /// [`StoreError::Payload`] when the content does not hash to the
    /// announced checksum, or the file system failed; the temporary
    /// directory is then removed.
    pub async fn commit(mut self, rid: &str) -> Result<FileMeta, StoreError> {
        let result = self.publish(rid).await;
        self.remove_temp();
        result
    }

    async fn publish(&mut self, rid: &str) -> Result<FileMeta, StoreError> {
        let Some(dir) = self.dir.clone() else {
            return Err(StoreError::Io {
                path: self.files.clone(),
                source: io::Error::other("upload already finished"),
            });
        };
        let hash = self
            .writer
            .finish()
            .await
            .and_then(|hash| hash.ok_or_else(|| io::Error::other("the upload's hash was lost")))
            .map_err(io_at(&dir))?;
        let sha256 = hash.finish(rid)?.sha256;
        let id = random_hex(12).map_err(io_at(&dir))?;
        let meta = FileMeta {
            id: id.clone(),
            filename: self.filename.clone(),
            mimetype: self.mimetype.clone(),
            bytes: self.bytes,
            sha256,
        };
        let json = serde_json::json!({
            "filename": meta.filename,
            "mimetype": meta.mimetype,
            "bytes": meta.bytes,
            "sha256": meta.sha256,
        });
        let meta_path = dir.join("meta.json");
        let mut meta_file = tokio::fs::File::create(&meta_path)
            .await
            .map_err(io_at(&meta_path))?;
        meta_file
            .write_all(json.to_string().as_bytes())
            .await
            .map_err(io_at(&meta_path))?;
        meta_file.sync_all().await.map_err(io_at(&meta_path))?;
        drop(meta_file);
        let target = self.files.join(&id);
        tokio::fs::rename(&dir, &target)
            .await
            .map_err(io_at(&target))?;
        self.dir = None;
        #[cfg(unix)]
        {
            // Make the rename durable. The file is published either way, so
            // a failure here is not the upload's failure.
            if let Ok(files) = tokio::fs::File::open(&self.files).await {
                let _ = files.sync_all().await;
            }
        }
        Ok(meta)
    }

    /// Abandons the upload and removes what was written (after the write
    /// in flight, if any, returned).
    pub async fn discard(mut self) {
        self.writer.discard().await;
        if let Some(dir) = self.dir.take() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
    }

    fn remove_temp(&mut self) {
        self.writer.close();
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
        upload.write(Bytes::from_static(b"hello ")).await.unwrap();
        upload.write(Bytes::from_static(b"world")).await.unwrap();
        let meta = upload.commit("ab").await.unwrap();
        assert!(!temp.exists());
        assert_eq!(meta.bytes, 11);
        assert_eq!(meta.sha256, crate::stream::sha256_hex(b"hello world"));
        assert_eq!(meta.mimetype, "text/plain");
        assert_eq!(store.meta(&meta.id).await.unwrap(), meta);
        assert_eq!(store.find_by_name("hello.txt").await.unwrap(), meta);
        let content = std::fs::read(root.join("files").join(&meta.id).join("content")).unwrap();
        assert_eq!(content, b"hello world");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn written_behind_content_is_complete_and_the_backlog_bounded() {
        // Past a background write-back, in chunks of the default size.
        let root = temp_root("behind");
        let store = FileStore::open(&root).unwrap();
        let mut upload = store.begin_upload("big.bin", "").await.unwrap();
        let total = usize::try_from(UPLOAD_SYNC_EVERY).unwrap() + 3 * UPLOAD_WRITE_BEHIND + 17;
        let content: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let content = Bytes::from(content);
        let digest = crate::stream::sha256(&content);
        upload.set_hash(PayloadHash::new(Some(digest)));
        let mut at = 0;
        while at < total {
            let end = total.min(at + 256 * 1024);
            upload.write(content.slice(at..end)).await.unwrap();
            assert!(
                upload.backlog() < UPLOAD_WRITE_BEHIND,
                "{}",
                upload.backlog()
            );
            at = end;
        }
        assert_eq!(upload.bytes(), total as u64);
        let meta = upload.commit("00").await.unwrap();
        assert_eq!(meta.bytes, total as u64);
        assert_eq!(meta.sha256, crate::stream::sha256_hex(&content));
        let stored = std::fs::read(root.join("files").join(&meta.id).join("content")).unwrap();
        assert!(stored == content, "stored content differs");
        assert!(names(&root.join("tmp")).is_empty());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn a_checksum_mismatch_stores_nothing() {
        let root = temp_root("mismatch");
        let store = FileStore::open(&root).unwrap();
        let mut upload = store.begin_upload("a.bin", "").await.unwrap();
        upload.set_hash(PayloadHash::new(Some(crate::stream::sha256(b"abc"))));
        upload.write(Bytes::from_static(b"abd")).await.unwrap();
        match upload.commit("u7").await {
            Err(StoreError::Payload(StreamError::ChecksumMismatch { rid, .. })) => {
                assert_eq!(rid, "u7");
            }
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        assert!(names(&root.join("tmp")).is_empty());
        assert!(names(&root.join("files")).is_empty());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn discarded_upload_leaves_nothing_after_its_write() {
        let root = temp_root("discard");
        let store = FileStore::open(&root).unwrap();
        let mut upload = store.begin_upload("a.bin", "").await.unwrap();
        upload.write(Bytes::from(vec![9; 1 << 20])).await.unwrap();
        upload.discard().await;
        assert!(names(&root.join("tmp")).is_empty());
        assert!(names(&root.join("files")).is_empty());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn dropped_upload_leaves_nothing() {
        let root = temp_root("drop");
        let store = FileStore::open(&root).unwrap();
        let mut upload = store.begin_upload("a.bin", "").await.unwrap();
        upload.write(Bytes::from_static(&[1, 2, 3])).await.unwrap();
        drop(upload);
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(root.join("files")).unwrap().count(), 0);
        std::fs::remove_dir_all(root).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn reopen_after_a_crash_keeps_finished_uploads_only() {
        let root = temp_root("crash");
        let store = FileStore::open(&root).unwrap();
        let mut done = store.begin_upload("done.bin", "").await.unwrap();
        done.write(Bytes::from_static(b"complete content"))
            .await
            .unwrap();
        let kept = done.commit("00ff").await.unwrap();
        // An upload in the middle of its chunks when the process was
        // killed: no drop, no discard ran.
        let mut partial = store.begin_upload("partial.bin", "").await.unwrap();
        partial.write(Bytes::from(vec![7; 4096])).await.unwrap();
        let partial_content = partial.temp_dir().unwrap().join("content");
        std::mem::forget(partial);
        // One killed after writing its metadata, before the rename.
        let late = root.join("tmp").join("0123456789abcdef0123456789abcdef");
        std::fs::create_dir_all(&late).unwrap();
        std::fs::write(late.join("content"), b"late").unwrap();
        std::fs::write(
            late.join("meta.json"),
            r#"{"filename":"late.bin","mimetype":"a/b","bytes":4,"sha256":"00"}"#,
        )
        .unwrap();
        assert!(partial_content.exists());
        drop(store);

        let store = FileStore::open(&root).unwrap();
        assert!(names(&root.join("tmp")).is_empty());
        assert_eq!(names(&root.join("files")), vec![kept.id.clone()]);
        assert_eq!(store.meta(&kept.id).await.unwrap(), kept);
        let content = std::fs::read(root.join("files").join(&kept.id).join("content")).unwrap();
        assert_eq!(content, b"complete content");
        for gone in ["partial.bin", "late.bin"] {
            assert!(matches!(
                store.find_by_name(gone).await,
                Err(StoreError::NotFound { .. })
            ));
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn open_removes_incomplete_published_files() {
        let root = temp_root("incomplete");
        let files = root.join("files");
        let entry = |id: &str, content: Option<&[u8]>, meta: Option<&str>| {
            let dir = files.join(id);
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(content) = content {
                std::fs::write(dir.join("content"), content).unwrap();
            }
            if let Some(meta) = meta {
                std::fs::write(dir.join("meta.json"), meta).unwrap();
            }
        };
        let meta = |bytes: u64| {
            format!(r#"{{"filename":"f.bin","mimetype":"a/b","bytes":{bytes},"sha256":"00"}}"#)
        };
        let good = "aaaaaaaaaaaaaaaaaaaaaaaa";
        entry(good, Some(b"12345"), Some(&meta(5)));
        entry("bbbbbbbbbbbbbbbbbbbbbbbb", Some(b"123"), Some(&meta(5)));
        entry("cccccccccccccccccccccccc", Some(b"12345"), None);
        entry(
            "dddddddddddddddddddddddd",
            Some(b"12345"),
            Some("{not json"),
        );
        entry("eeeeeeeeeeeeeeeeeeeeeeee", None, Some(&meta(0)));
        // Not ours: left alone.
        entry("notes", Some(b"x"), None);
        let store = FileStore::open(&root).unwrap();
        assert_eq!(names(&files), [good, "notes"]);
        assert_eq!(store.remove_incomplete().unwrap(), 0);
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
