//! `/vsistrata/`: a GDAL virtual file system whose reads are object_store range requests.
//!
//! GDAL's own network handlers (`/vsis3/`, ...) have their own configuration and credentials;
//! routing every read through object_store instead gives one storage layer for the whole
//! pipeline: the same URLs, credentials, retries and S3-compatible endpoints everywhere, and a
//! COG is read by the byte ranges GDAL asks for, never downloaded whole. GDAL's plugin layer
//! adds block caching (see [`BLOCK_SIZE_BYTES`]), so small header reads coalesce.
//!
//! Reads retry transient store errors (timeouts, resets, throttling: everything
//! [`ErrorClass::of_store_error`] calls retryable) with exponential backoff and jitter
//! ([`ReadRetry`]) before GDAL ever sees a failure; a missing object or refused credentials
//! fail at once. When a read does fail, GDAL only reports "read error"; the store's typed
//! error is kept ([`VsiFile::take_store_error`]) so the caller can report the real cause and
//! classify it (a scene that could not be *fetched* is not a bad scene).
//!
//! An object is registered with [`VsiFile::open`], which returns the `/vsistrata/...` path to
//! hand to GDAL; dropping the [`VsiFile`] unregisters it. GDAL calls into this module from
//! whichever thread runs it: those must be blocking threads (`spawn_blocking` or plain
//! threads), never async tasks, because every read waits for the store.

use std::{
    collections::HashMap,
    ffi::{c_char, c_int, c_void, CStr},
    ops::Range,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable as _};
use bytes::Bytes;
use object_store::{path::Path, ObjectStore, ObjectStoreExt};

use crate::{ErrorClass, OperatorError};
use storage::Location;

const PREFIX: &str = "/vsistrata/";
const PREFIX_C: &CStr = c"/vsistrata/";

/// GDAL reads through a block cache of this block size: small header reads coalesce into one
/// request, and COG tile reads (tens to hundreds of KiB) take a few.
pub const BLOCK_SIZE_BYTES: usize = 64 * 1024;
/// Per open file, GDAL keeps this many bytes of blocks.
const CACHE_SIZE_BYTES: usize = 16 * 1024 * 1024;

const fn default_max_retries() -> usize {
    5
}
const fn default_min_delay_ms() -> u64 {
    100
}
const fn default_max_delay_ms() -> u64 {
    5_000
}

/// How store requests retry transient errors: exponential backoff, the delay doubling from
/// `min_delay_ms` up to `max_delay_ms`, each delay plus a random jitter of up to itself (so
/// many readers hit by one outage do not retry in step). With the defaults a read gives up
/// after about 3–6 s of failures; the stage's caller then retries the whole scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRetry {
    /// Retries after the first attempt (0: never retry).
    pub max_retries: usize,
    /// Delay before the first retry, in milliseconds.
    pub min_delay_ms: u64,
    /// Longest delay between two attempts, in milliseconds.
    pub max_delay_ms: u64,
}

impl Default for ReadRetry {
    fn default() -> Self {
        Self { max_retries: default_max_retries(), min_delay_ms: default_min_delay_ms(), max_delay_ms: default_max_delay_ms() }
    }
}

impl ReadRetry {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.min_delay_ms))
            .with_max_delay(Duration::from_millis(self.max_delay_ms.max(self.min_delay_ms)))
            .with_max_times(self.max_retries)
            .with_jitter()
    }

    /// Runs `request` until it succeeds, fails permanently, or the retries are spent; the
    /// last error is returned.
    async fn run<T, F>(&self, uri: &str, request: impl FnMut() -> F) -> Result<T, object_store::Error>
    where
        F: std::future::Future<Output = Result<T, object_store::Error>>,
    {
        request
            .retry(self.backoff())
            .when(|error| ErrorClass::of_store_error(error) == ErrorClass::Retryable)
            .notify(|error, delay| {
                tracing::warn!(uri, error = %error, delay_ms = delay.as_millis() as u64, "Object store request failed; retrying.");
            })
            .await
    }
}

struct Entry {
    uri: String,
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    runtime: tokio::runtime::Handle,
    bytes_fetched: AtomicU64,
    requests: AtomicU64,
    retry: ReadRetry,
    /// The store's error of the last read that failed for good.
    last_error: Mutex<Option<object_store::Error>>,
}

/// A read failed for good; the store's error is in [`Entry::last_error`].
struct ReadFailed;

impl Entry {
    /// Runs a store request, with retries, from a GDAL (blocking) thread. The request runs as
    /// a task on the runtime that registered the file, so this works from any thread without
    /// nesting runtimes; the calling thread just waits.
    fn fetch(self: &Arc<Self>, ranges: Vec<Range<u64>>) -> Result<Vec<Bytes>, ReadFailed> {
        let entry = Arc::clone(self);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let wanted: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        self.runtime.spawn(async move {
            let attempt = || {
                let (entry, ranges) = (&entry, &ranges);
                async move {
                    entry.requests.fetch_add(1, Ordering::Relaxed);
                    match ranges.as_slice() {
                        [range] => entry.store.get_range(&entry.path, range.clone()).await.map(|b| vec![b]),
                        _ => entry.store.get_ranges(&entry.path, ranges).await,
                    }
                }
            };
            let _ = tx.send(entry.retry.run(&entry.uri, attempt).await);
        });
        let result = rx.recv().unwrap_or_else(|_| {
            Err(object_store::Error::Generic { store: "vsistrata", source: "the runtime shut down during a read".into() })
        });
        match result {
            Ok(parts) => {
                self.bytes_fetched.fetch_add(wanted, Ordering::Relaxed);
                Ok(parts)
            }
            Err(error) => {
                tracing::warn!(uri = %self.uri, error = %error, "Object store read failed.");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
                Err(ReadFailed)
            }
        }
    }
}

fn registry() -> &'static Mutex<HashMap<String, Arc<Entry>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<Entry>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn lookup(filename: *const c_char) -> Option<Arc<Entry>> {
    if filename.is_null() {
        return None;
    }
    // SAFETY: GDAL passes a valid NUL-terminated file name.
    let name = unsafe { CStr::from_ptr(filename) }.to_str().ok()?;
    // GDAL hands callbacks the name with the prefix stripped; accept both forms.
    let key = name.strip_prefix(PREFIX).unwrap_or(name);
    registry().lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
}

/// An object made visible to GDAL under a `/vsistrata/` path for as long as this lives.
pub struct VsiFile {
    vsi_path: String,
    /// Registry key: the path without the prefix.
    key: String,
    entry: Arc<Entry>,
}

impl VsiFile {
    /// Registers the object at `location` (one HEAD request for its size), with the default
    /// [`ReadRetry`].
    ///
    /// # Errors
    /// As [`VsiFile::open_with_retry`].
    pub async fn open(location: &Location) -> Result<Self, OperatorError> {
        Self::open_with_retry(location, ReadRetry::default()).await
    }

    /// Registers the object at `location` (one HEAD request for its size); the HEAD request
    /// and every read retry transient store errors as `retry` says.
    ///
    /// # Errors
    /// [`OperatorError::Storage`] when the object is missing or the store fails (after the
    /// retries); [`OperatorError::InvalidLocation`] when GDAL's plugin cannot be installed.
    pub async fn open_with_retry(location: &Location, retry: ReadRetry) -> Result<Self, OperatorError> {
        install().map_err(|reason| OperatorError::InvalidLocation { location: location.url(), reason })?;
        let uri = location.url();
        let meta = retry
            .run(&uri, move || location.store().head(location.path()))
            .await
            .map_err(|source| OperatorError::Storage { uri: uri.clone(), source })?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // Keep the file name so GDAL can pick drivers by extension (.jp2, .vrt, ...).
        let name = location.file_name().unwrap_or("object");
        let key = format!("{id}/{name}");
        let vsi_path = format!("{PREFIX}{key}");
        let entry = Arc::new(Entry {
            uri,
            store: Arc::clone(location.store()),
            path: location.path().clone(),
            size: meta.size,
            runtime: tokio::runtime::Handle::current(),
            bytes_fetched: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retry,
            last_error: Mutex::new(None),
        });
        registry().lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), Arc::clone(&entry));
        Ok(Self { vsi_path, key, entry })
    }

    /// The path to give GDAL.
    pub fn path(&self) -> &str {
        &self.vsi_path
    }

    /// The object's size in bytes.
    pub fn size(&self) -> u64 {
        self.entry.size
    }

    /// Bytes fetched from the store so far.
    pub fn bytes_fetched(&self) -> u64 {
        self.entry.bytes_fetched.load(Ordering::Relaxed)
    }

    /// Read requests made to the store so far, retries included (the HEAD of
    /// [`VsiFile::open`] not counted).
    pub fn requests(&self) -> u64 {
        self.entry.requests.load(Ordering::Relaxed)
    }

    /// The URL of the object.
    pub fn uri(&self) -> &str {
        &self.entry.uri
    }

    /// Whether a read has failed for good (after its retries) since the last
    /// [`VsiFile::take_store_error`].
    pub fn has_store_error(&self) -> bool {
        self.entry.last_error.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Takes the store's error of the last read that failed for good — GDAL only reports
    /// "read error", this says why, typed, so its [`ErrorClass`] can be told.
    pub fn take_store_error(&self) -> Option<object_store::Error> {
        self.entry.last_error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for VsiFile {
    fn drop(&mut self) {
        registry().lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

struct OpenFile {
    entry: Arc<Entry>,
    position: u64,
    at_eof: bool,
}

fn install() -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            // SAFETY: the struct is allocated by GDAL, filled with functions of the declared
            // signatures, and handed back to GDAL, which keeps it for the process lifetime.
            unsafe {
                let callbacks = gdal_sys::VSIAllocFilesystemPluginCallbacksStruct();
                if callbacks.is_null() {
                    return Err("GDAL could not allocate a plugin callback table".to_owned());
                }
                (*callbacks).stat = Some(stat);
                (*callbacks).open = Some(open);
                (*callbacks).tell = Some(tell);
                (*callbacks).seek = Some(seek);
                (*callbacks).read = Some(read);
                (*callbacks).read_multi_range = Some(read_multi_range);
                (*callbacks).eof = Some(eof);
                (*callbacks).close = Some(close);
                (*callbacks).nBufferSize = BLOCK_SIZE_BYTES;
                (*callbacks).nCacheSize = CACHE_SIZE_BYTES;
                // GDAL keeps the prefix pointer itself, not a copy: it must be 'static.
                if gdal_sys::VSIInstallPluginHandler(PREFIX_C.as_ptr(), callbacks) != 0 {
                    return Err("GDAL refused to install the /vsistrata/ handler".to_owned());
                }
            }
            Ok(())
        })
        .clone()
}

unsafe extern "C" fn stat(_user: *mut c_void, filename: *const c_char, buf: *mut gdal_sys::VSIStatBufL, _flags: c_int) -> c_int {
    let Some(entry) = lookup(filename) else { return -1 };
    if buf.is_null() {
        return -1;
    }
    // The bindings declare the stat buffer opaque; it is the platform's `struct stat64`.
    let buf = buf.cast::<libc::stat64>();
    // SAFETY: GDAL passes a writable stat buffer; zeroing it first leaves no garbage fields.
    unsafe {
        std::ptr::write_bytes(buf, 0, 1);
        (*buf).st_size = i64::try_from(entry.size).unwrap_or(i64::MAX);
        (*buf).st_mode = libc::S_IFREG | 0o444;
    }
    0
}

unsafe extern "C" fn open(_user: *mut c_void, filename: *const c_char, access: *const c_char) -> *mut c_void {
    if !access.is_null() {
        // SAFETY: GDAL passes a NUL-terminated access mode such as "rb".
        let mode = unsafe { CStr::from_ptr(access) }.to_bytes();
        if mode.iter().any(|c| matches!(c, b'w' | b'a' | b'+')) {
            return std::ptr::null_mut(); // read-only file system
        }
    }
    match lookup(filename) {
        Some(entry) => Box::into_raw(Box::new(OpenFile { entry, position: 0, at_eof: false })).cast(),
        None => std::ptr::null_mut(),
    }
}

/// # Safety
/// `file` must be a pointer returned by [`open`] and not yet closed.
unsafe fn file<'a>(file: *mut c_void) -> &'a mut OpenFile {
    // SAFETY: upheld by the caller; GDAL uses a handle from one thread at a time.
    unsafe { &mut *file.cast::<OpenFile>() }
}

unsafe extern "C" fn tell(handle: *mut c_void) -> gdal_sys::vsi_l_offset {
    // SAFETY: GDAL passes a handle from `open`.
    unsafe { file(handle) }.position
}

unsafe extern "C" fn seek(handle: *mut c_void, offset: gdal_sys::vsi_l_offset, whence: c_int) -> c_int {
    // SAFETY: GDAL passes a handle from `open`.
    let f = unsafe { file(handle) };
    let base = match whence {
        libc::SEEK_SET => 0,
        libc::SEEK_CUR => f.position,
        libc::SEEK_END => f.entry.size,
        _ => return -1,
    };
    f.position = base.saturating_add(offset);
    f.at_eof = false;
    0
}

unsafe extern "C" fn read(handle: *mut c_void, buffer: *mut c_void, size: usize, count: usize) -> usize {
    // SAFETY: GDAL passes a handle from `open`.
    let f = unsafe { file(handle) };
    let wanted = size.saturating_mul(count) as u64;
    if size == 0 || wanted == 0 {
        return 0;
    }
    let end = f.position.saturating_add(wanted).min(f.entry.size);
    if f.position >= end {
        f.at_eof = true;
        return 0;
    }
    // `fetch` takes a list of ranges (coalesced into few requests); this read needs one.
    #[allow(clippy::single_range_in_vec_init)]
    let Ok(mut parts) = f.entry.fetch(vec![f.position..end]) else {
        return 0;
    };
    let data = parts.pop().unwrap_or_default();
    let got = data.len().min(usize::try_from(end - f.position).unwrap_or(usize::MAX));
    // SAFETY: GDAL's buffer holds `size * count` bytes and `got` is at most that.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buffer.cast::<u8>(), got) };
    f.position += got as u64;
    if (got as u64) < wanted {
        f.at_eof = true;
    }
    got / size
}

unsafe extern "C" fn read_multi_range(
    handle: *mut c_void,
    n_ranges: c_int,
    data: *mut *mut c_void,
    offsets: *const gdal_sys::vsi_l_offset,
    sizes: *const usize,
) -> c_int {
    // SAFETY: GDAL passes a handle from `open`.
    let f = unsafe { file(handle) };
    let n = usize::try_from(n_ranges).unwrap_or(0);
    if n == 0 {
        return 0;
    }
    // SAFETY: GDAL passes arrays of `n_ranges` offsets, sizes and destination buffers.
    let (offsets, sizes, buffers) =
        unsafe { (std::slice::from_raw_parts(offsets, n), std::slice::from_raw_parts(sizes, n), std::slice::from_raw_parts(data, n)) };
    let ranges: Vec<_> = offsets.iter().zip(sizes).map(|(&o, &s)| o..o.saturating_add(s as u64)).collect();
    if ranges.iter().any(|r| r.end > f.entry.size) {
        return -1;
    }
    let Ok(parts) = f.entry.fetch(ranges) else { return -1 };
    for ((part, &size), &buffer) in parts.iter().zip(sizes).zip(buffers) {
        if part.len() != size {
            return -1;
        }
        // SAFETY: each destination buffer holds `size` bytes.
        unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), buffer.cast::<u8>(), size) };
    }
    0
}

unsafe extern "C" fn eof(handle: *mut c_void) -> c_int {
    // SAFETY: GDAL passes a handle from `open`.
    c_int::from(unsafe { file(handle) }.at_eof)
}

unsafe extern "C" fn close(handle: *mut c_void) -> c_int {
    if !handle.is_null() {
        // SAFETY: the handle came from Box::into_raw in `open` and GDAL closes it once.
        drop(unsafe { Box::from_raw(handle.cast::<OpenFile>()) });
    }
    0
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn generic() -> object_store::Error {
        object_store::Error::Generic { store: "test", source: "connection reset".into() }
    }

    /// Runs a request that fails with `error()` for its first `failures` attempts; returns the
    /// outcome and the number of attempts.
    async fn attempts(retry: ReadRetry, failures: usize, error: fn() -> object_store::Error) -> (Result<u8, object_store::Error>, usize) {
        let count = AtomicUsize::new(0);
        let result = retry
            .run("memory://test/x", || async {
                let n = count.fetch_add(1, Ordering::SeqCst);
                if n < failures {
                    Err(error())
                } else {
                    Ok(7)
                }
            })
            .await;
        (result, count.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_they_pass_or_the_retries_run_out() {
        let retry = ReadRetry { max_retries: 3, min_delay_ms: 1, max_delay_ms: 2 };
        let (result, n) = attempts(retry, 2, generic).await;
        assert_eq!((result.ok(), n), (Some(7), 3));
        let (result, n) = attempts(retry, usize::MAX, generic).await;
        assert!(matches!(result, Err(object_store::Error::Generic { .. })));
        assert_eq!(n, 4, "one attempt and three retries");
        let (_, n) = attempts(ReadRetry { max_retries: 0, ..retry }, usize::MAX, generic).await;
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let retry = ReadRetry { max_retries: 3, min_delay_ms: 1, max_delay_ms: 2 };
        let not_found = || object_store::Error::NotFound { path: "x".to_owned(), source: "gone".into() };
        let (result, n) = attempts(retry, usize::MAX, not_found).await;
        assert!(matches!(result, Err(object_store::Error::NotFound { .. })));
        assert_eq!(n, 1);
        let denied = || object_store::Error::PermissionDenied { path: "x".to_owned(), source: "no".into() };
        assert_eq!(attempts(retry, usize::MAX, denied).await.1, 1);
    }

    #[test]
    fn the_backoff_grows_and_is_capped() {
        let retry = ReadRetry { max_retries: 6, min_delay_ms: 100, max_delay_ms: 400 };
        let delays: Vec<u128> = backon::BackoffBuilder::build(retry.backoff()).map(|d| d.as_millis()).collect();
        assert_eq!(delays.len(), 6);
        // Each delay is its exponential step plus a jitter below that step.
        for (delay, step) in delays.iter().zip([100, 200, 400, 400, 400, 400]) {
            assert!((step - 1..2 * step).contains(delay), "{delays:?}");
        }
    }
}
