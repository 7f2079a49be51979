//! File IO of the transfers on tokio's blocking pool, shared by the client
//! and the server: [`ChunkReader`] reads a file ahead of the connection that
//! sends it, [`FileWriter`] writes received chunks behind the connection
//! that receives them.
//!
//! | piece         | used by                                   | bounded by |
//! |---------------|-------------------------------------------|------------|
//! | `ChunkReader` | client upload, server download            | `read_ahead` chunks ready, one read in flight |
//! | `FileWriter`  | client download, server upload (`store`)  | the caller's write-behind limit; one write in flight; a background `fdatasync` every `sync_every` bytes |
//!
//! A `FileWriter` given a [`PayloadHash`] hashes each chunk on its blocking
//! thread just before writing it, so a received payload is hashed beside
//! the connection's task rather than in it.
//!
//! Both hold a `std` file and hand it to one blocking task at a time, which
//! hands it back: tokio's file would copy every chunk into a buffer of its
//! own. Their `wait` methods are cancel-safe (a dropped wait leaves the IO
//! in flight, collected by the next wait), so they can race the connection
//! in a `select!`.

use std::collections::VecDeque;
use std::io;

use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::stream::PayloadHash;

/// Reads up to `size` bytes (less only at the end of the file), straight
/// into the chunk's own allocation (no zeroing, no second copy).
fn read_chunk(file: &mut std::fs::File, size: usize) -> io::Result<Bytes> {
    use std::io::Read;
    let mut chunk = Vec::with_capacity(size);
    file.take(size as u64).read_to_end(&mut chunk)?;
    Ok(Bytes::from(chunk))
}

/// Block size of [`sha256_of`]: a few of them stay in L2 between the read
/// and the hash.
#[cfg(feature = "client")]
const HASH_BLOCK: usize = 128 * 1024;

/// Blocks of [`sha256_of`] in flight between its reader and its hasher.
#[cfg(feature = "client")]
const HASH_BLOCKS: usize = 4;

/// The SHA-256 of `file` from where it stands to its end, on the calling
/// (blocking) thread and one scoped reader thread: block N+1 is read while
/// block N is hashed, so the pass costs about the hash alone instead of the
/// read plus the hash (256 MiB from the page cache here: about 60 ms of
/// reading and 180 ms of SHA-256). At most [`HASH_BLOCKS`] blocks exist.
#[cfg(feature = "client")]
pub(crate) fn sha256_of(file: &mut std::fs::File) -> io::Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    use std::sync::mpsc::sync_channel;

    let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(HASH_BLOCKS);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(HASH_BLOCKS);
    for _ in 0..HASH_BLOCKS {
        // The channel holds exactly HASH_BLOCKS, and nobody takes from it yet.
        let _ = empty_tx.send(vec![0; HASH_BLOCK]);
    }
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> io::Result<()> {
            // Ends when the file does, on an error, or when the hasher is gone.
            while let Ok(mut block) = empty_rx.recv() {
                let mut filled = 0;
                while filled < block.len() {
                    match file.read(block.get_mut(filled..).unwrap_or_default()) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                if filled == 0 || full_tx.send((block, filled)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        let mut hasher = Sha256::new();
        // Ends when the reader has dropped its sender: at the end or on an error.
        while let Ok((block, len)) = full_rx.recv() {
            hasher.update(block.get(..len).unwrap_or_default());
            // The reader may be gone already (end of file); the block is then dropped.
            let _ = empty_tx.send(block);
        }
        reader
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the hashing pass's reader panicked")))?;
        Ok(hasher.finalize().into())
    })
}

/// A read on the blocking pool; it hands the file back.
type PendingRead = JoinHandle<(std::fs::File, io::Result<Bytes>)>;

/// A file's chunks, read on the blocking pool one at a time while earlier
/// ones are sent; an empty chunk is the end of the file. At most
/// `read_ahead` chunks wait to be taken, so a large file never sits in
/// memory.
pub(crate) struct ChunkReader {
    /// The file, while no read is in flight.
    file: Option<std::fs::File>,
    reading: Option<PendingRead>,
    ready: VecDeque<io::Result<Bytes>>,
    /// Bytes per chunk.
    size: usize,
    /// Chunks read ahead at most.
    read_ahead: usize,
    done: bool,
}

impl ChunkReader {
    /// A reader of `file` in chunks of `size` bytes, at most `read_ahead`
    /// of them ready; nothing is read before [`read_ahead`](Self::read_ahead).
    pub(crate) fn new(file: std::fs::File, size: usize, read_ahead: usize) -> Self {
        Self {
            file: Some(file),
            reading: None,
            ready: VecDeque::new(),
            size,
            read_ahead,
            done: false,
        }
    }

    /// Starts the next read unless one is in flight, enough are ready, or
    /// the end was reached.
    pub(crate) fn read_ahead(&mut self) {
        if self.reading.is_some() || self.done || self.ready.len() >= self.read_ahead {
            return;
        }
        let Some(mut file) = self.file.take() else {
            return;
        };
        let size = self.size;
        self.reading = Some(tokio::task::spawn_blocking(move || {
            let chunk = read_chunk(&mut file, size);
            (file, chunk)
        }));
    }

    /// A read is in flight.
    pub(crate) fn is_reading(&self) -> bool {
        self.reading.is_some()
    }

    /// The next chunk when it is ready; a read that finished meanwhile is
    /// collected first (this never waits for a read still running).
    pub(crate) async fn next_ready(&mut self) -> Option<io::Result<Bytes>> {
        if self.ready.is_empty() && self.reading.as_ref().is_some_and(JoinHandle::is_finished) {
            self.wait().await;
        }
        self.ready.pop_front()
    }

    /// Waits for the read in flight (cancel-safe: a dropped wait leaves the
    /// read in flight) and starts the next one.
    pub(crate) async fn wait(&mut self) {
        let Some(reading) = &mut self.reading else {
            return;
        };
        let joined = reading.await;
        self.reading = None;
        let chunk = match joined {
            Ok((file, chunk)) => {
                self.file = Some(file);
                chunk
            }
            Err(join) => Err(io::Error::other(join)),
        };
        self.done = chunk.as_ref().map_or(true, Bytes::is_empty);
        self.ready.push_back(chunk);
        self.read_ahead();
    }
}

/// A write of queued chunks on the blocking pool; it hands the file and
/// the hash back.
type PendingWrite = JoinHandle<(std::fs::File, Option<PayloadHash>, io::Result<()>)>;

/// A file written on the blocking pool while the connection goes on
/// receiving: [`push`](Self::push) queues a chunk's own bytes (no copy),
/// one write of everything queued runs at a time, and every `sync_every`
/// bytes written a background `fdatasync` starts, so the sync in
/// [`finish`](Self::finish) has little left. The caller bounds the
/// [`backlog`](Self::backlog) by waiting (see
/// [`write_behind`](Self::write_behind)). With a hash
/// ([`set_hash`](Self::set_hash)) the write hashes each chunk first.
pub(crate) struct FileWriter {
    /// The file, while no write is in flight.
    file: Option<std::fs::File>,
    /// The hash of what was written, while no write is in flight.
    hash: Option<PayloadHash>,
    queued: Vec<Bytes>,
    queued_bytes: usize,
    /// The write in flight and its size.
    writing: Option<(usize, PendingWrite)>,
    syncing: Option<JoinHandle<io::Result<()>>>,
    /// Bytes on their way to the disk (writes finished).
    written: u64,
    /// `written` when the last background write-back started.
    synced: u64,
    /// Bytes written between background write-backs.
    sync_every: u64,
}

impl FileWriter {
    /// A writer of `file`, asking the disk to write back every
    /// `sync_every` bytes.
    pub(crate) fn new(file: std::fs::File, sync_every: u64) -> Self {
        Self {
            file: Some(file),
            hash: None,
            queued: Vec::new(),
            queued_bytes: 0,
            writing: None,
            syncing: None,
            written: 0,
            synced: 0,
            sync_every,
        }
    }

    /// Hashes every chunk pushed from now on with `hash`, which
    /// [`finish`](Self::finish) returns. Set it before the first chunk.
    pub(crate) fn set_hash(&mut self, hash: PayloadHash) {
        debug_assert!(
            self.written == 0 && self.queued.is_empty() && self.writing.is_none(),
            "set the hash before the first chunk"
        );
        self.hash = Some(hash);
    }

    /// Bytes received and not yet written.
    pub(crate) fn backlog(&self) -> usize {
        self.queued_bytes + self.writing.as_ref().map_or(0, |(bytes, _)| *bytes)
    }

    /// A write is in flight.
    #[cfg(feature = "client")]
    pub(crate) fn is_writing(&self) -> bool {
        self.writing.is_some()
    }

    /// Queues `data` and starts writing unless a write is in flight.
    pub(crate) fn push(&mut self, data: Bytes) {
        self.queued_bytes += data.len();
        self.queued.push(data);
        self.start();
    }

    /// Queues `data` (after collecting a write that finished meanwhile) and
    /// returns, unless `limit` bytes or more wait for the disk: then it
    /// waits until the backlog is below `limit`.
    ///
    /// # Errors
    ///
    /// This write or an earlier one failed.
    #[cfg(feature = "server")]
    pub(crate) async fn write_behind(&mut self, data: Bytes, limit: usize) -> io::Result<()> {
        if self.writing.as_ref().is_some_and(|(_, w)| w.is_finished()) {
            self.wait().await?;
        }
        self.push(data);
        while self.backlog() >= limit {
            self.wait().await?;
        }
        Ok(())
    }

    /// Starts writing what is queued unless a write is in flight, and a
    /// background write-back when enough was written since the last one.
    fn start(&mut self) {
        if self.writing.is_some() || self.queued.is_empty() {
            return;
        }
        let Some(mut file) = self.file.take() else {
            return;
        };
        if self.syncing.as_ref().is_none_or(JoinHandle::is_finished)
            && self.written - self.synced >= self.sync_every
            && let Ok(clone) = file.try_clone()
        {
            // A failed write-back shows again in the sync of `finish`.
            self.synced = self.written;
            self.syncing = Some(tokio::task::spawn_blocking(move || clone.sync_data()));
        }
        let chunks = std::mem::take(&mut self.queued);
        let bytes = std::mem::take(&mut self.queued_bytes);
        let mut hash = self.hash.take();
        let handle = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let written = chunks.iter().try_for_each(|chunk| {
                if let Some(hash) = &mut hash {
                    hash.update(chunk);
                }
                file.write_all(chunk)
            });
            (file, hash, written)
        });
        self.writing = Some((bytes, handle));
    }

    /// Waits for the write in flight, if any (cancel-safe: a dropped wait
    /// leaves it in flight), and starts writing what was queued meanwhile.
    ///
    /// # Errors
    ///
    /// The write failed.
    pub(crate) async fn wait(&mut self) -> io::Result<()> {
        let Some((bytes, writing)) = &mut self.writing else {
            return Ok(());
        };
        let bytes = *bytes;
        let joined = writing.await;
        self.writing = None;
        let (file, hash, written) = joined.map_err(io::Error::other)?;
        self.file = Some(file);
        self.hash = hash;
        written?;
        self.written += bytes as u64;
        self.start();
        Ok(())
    }

    /// Writes everything queued, then syncs the file to disk (content and
    /// metadata) and closes it. Returns the hash of everything written, if
    /// one was [set](Self::set_hash).
    ///
    /// # Errors
    ///
    /// A write or the sync failed, or an earlier failure lost the file.
    pub(crate) async fn finish(&mut self) -> io::Result<Option<PayloadHash>> {
        while self.writing.is_some() {
            self.wait().await?;
        }
        if let Some(syncing) = self.syncing.take() {
            // Only a head start for the sync below, which reports errors.
            let _ = syncing.await;
        }
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("the file being written was lost"))?;
        let hash = self.hash.take();
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .unwrap_or_else(|join| Err(io::Error::other(join)))?;
        Ok(hash)
    }

    /// Abandons the file: waits for the write in flight, if any, to return
    /// (so nothing writes after the caller removes the file), then drops
    /// what is queued and closes the file.
    #[cfg(feature = "server")]
    pub(crate) async fn discard(&mut self) {
        if let Some((_, writing)) = self.writing.take() {
            let _ = writing.await;
        }
        self.close();
    }

    /// Drops what is queued and closes the file at once (a write in flight
    /// ends on its own).
    #[cfg(feature = "server")]
    pub(crate) fn close(&mut self) {
        self.queued.clear();
        self.queued_bytes = 0;
        self.file = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let suffix = getrandom::u64().unwrap();
        let dir = std::env::temp_dir().join(format!("openiap-file-io-{tag}-{suffix:016x}"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[cfg(feature = "client")]
    #[test]
    fn sha256_of_hashes_from_the_position_to_the_end_at_every_block_boundary() {
        use sha2::{Digest, Sha256};
        use std::io::{Seek, SeekFrom, Write};
        let dir = scratch("sha");
        for len in [
            0,
            1,
            HASH_BLOCK - 1,
            HASH_BLOCK,
            HASH_BLOCK + 1,
            HASH_BLOCK * HASH_BLOCKS,
            HASH_BLOCK * (HASH_BLOCKS + 3) + 17,
        ] {
            let data = pattern(len);
            let path = dir.join(format!("f{len}"));
            std::fs::File::create(&path)
                .unwrap()
                .write_all(&data)
                .unwrap();
            let mut file = std::fs::File::open(&path).unwrap();
            let whole: [u8; 32] = Sha256::digest(&data).into();
            assert_eq!(sha256_of(&mut file).unwrap(), whole, "len {len}");
            let skip = len / 3;
            file.seek(SeekFrom::Start(skip as u64)).unwrap();
            let tail: [u8; 32] = Sha256::digest(&data[skip..]).into();
            assert_eq!(sha256_of(&mut file).unwrap(), tail, "len {len} from {skip}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(feature = "client")]
    #[test]
    fn sha256_of_reports_a_read_error() {
        // A directory opens, but reading it fails (EISDIR).
        let dir = scratch("sha-err");
        let mut file = std::fs::File::open(&dir).unwrap();
        assert!(sha256_of(&mut file).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn pattern(len: usize) -> Bytes {
        Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
    }

    #[tokio::test]
    async fn reader_reads_the_file_in_chunks_and_never_more_than_its_read_ahead() {
        let dir = scratch("read");
        let path = dir.join("a.bin");
        let content = pattern(10 * 1000 + 7);
        std::fs::write(&path, &content).unwrap();
        let mut reader = ChunkReader::new(std::fs::File::open(&path).unwrap(), 1000, 3);
        assert!(!reader.is_reading(), "nothing is read before read_ahead");
        reader.read_ahead();
        // Nobody takes chunks: the reader stops at its read-ahead.
        while reader.is_reading() {
            reader.wait().await;
        }
        assert_eq!(reader.ready.len(), 3);
        reader.read_ahead();
        assert!(!reader.is_reading());
        let mut read = Vec::new();
        loop {
            reader.read_ahead();
            let Some(chunk) = reader.next_ready().await else {
                reader.wait().await;
                continue;
            };
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= 1000);
            assert!(reader.ready.len() < 3);
            if chunk.is_empty() {
                break;
            }
            read.extend_from_slice(&chunk);
        }
        assert!(read == content, "read content differs");
        reader.read_ahead();
        assert!(!reader.is_reading(), "no read after the end");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(feature = "server")]
    #[tokio::test]
    async fn written_behind_content_is_complete_and_the_backlog_bounded() {
        // Past two background write-backs, in chunks of the default size.
        let dir = scratch("write");
        let path = dir.join("a.bin");
        let (sync_every, limit) = (3 << 20, 1 << 20);
        let total = 2 * sync_every + 3 * limit + 17;
        let content = pattern(total);
        let mut writer = FileWriter::new(std::fs::File::create(&path).unwrap(), sync_every as u64);
        writer.set_hash(PayloadHash::default());
        let mut at = 0;
        while at < total {
            let end = total.min(at + 256 * 1024);
            writer
                .write_behind(content.slice(at..end), limit)
                .await
                .unwrap();
            assert!(writer.backlog() < limit, "{}", writer.backlog());
            at = end;
        }
        let hash = writer.finish().await.unwrap().expect("the hash comes back");
        let digest = hash.finish("w").unwrap();
        assert_eq!(digest.sha256, crate::stream::sha256_hex(&content));
        assert!(!digest.checksum_verified, "nothing was announced");
        assert!(writer.synced >= sync_every as u64, "{}", writer.synced);
        assert_eq!(writer.backlog(), 0);
        let stored = std::fs::read(&path).unwrap();
        assert!(stored == content, "stored content differs");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn pushed_chunks_are_written_in_order() {
        let dir = scratch("push");
        let path = dir.join("a.bin");
        let content = pattern(300_001);
        let mut writer = FileWriter::new(std::fs::File::create(&path).unwrap(), 1 << 16);
        writer.set_hash(PayloadHash::new(Some(crate::stream::sha256(&content))));
        for piece in content.chunks(4096) {
            writer.push(Bytes::copy_from_slice(piece));
            if writer.backlog() >= 64 * 1024 {
                writer.wait().await.unwrap();
            }
        }
        let hash = writer.finish().await.unwrap().expect("the hash comes back");
        assert!(hash.finish("w").unwrap().checksum_verified);
        assert!(std::fs::read(&path).unwrap() == content, "content differs");
        // Without a hash, nothing is hashed and nothing comes back.
        let mut plain = FileWriter::new(std::fs::File::create(&path).unwrap(), 1 << 16);
        plain.push(content.clone());
        assert!(plain.finish().await.unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(feature = "server")]
    #[tokio::test]
    async fn discard_waits_for_the_write_in_flight() {
        let dir = scratch("discard");
        let path = dir.join("a.bin");
        let mut writer = FileWriter::new(std::fs::File::create(&path).unwrap(), 1 << 30);
        writer.push(Bytes::from(vec![9; 1 << 20]));
        assert!(writer.writing.is_some());
        writer.discard().await;
        assert!(writer.writing.is_none());
        assert_eq!(writer.backlog(), 0);
        // The write returned before discard did: the file holds all of it
        // and nothing writes to it any more.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        std::fs::remove_file(&path).unwrap();
        assert!(writer.finish().await.is_err(), "a discarded file is gone");
        assert!(!path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
