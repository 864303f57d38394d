//! `/vsistrata/`: a GDAL virtual file system whose reads are object_store range requests.
//!
//! GDAL's own network handlers (`/vsis3/`, ...) have their own configuration and credentials;
//! routing every read through object_store instead gives one storage layer for the whole
//! pipeline: the same URLs, credentials, retries and S3-compatible endpoints everywhere, and a
//! COG is read by the byte ranges GDAL asks for, never downloaded whole. GDAL's plugin layer
//! adds block caching (see [`BLOCK_SIZE_BYTES`]), so small header reads coalesce.
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
};

use bytes::Bytes;
use object_store::{path::Path, ObjectStore, ObjectStoreExt};

use crate::{storage::Location, OperatorError};

const PREFIX: &str = "/vsistrata/";
const PREFIX_C: &CStr = c"/vsistrata/";

/// GDAL reads through a block cache of this block size: small header reads coalesce into one
/// request, and COG tile reads (tens to hundreds of KiB) take a few.
pub const BLOCK_SIZE_BYTES: usize = 64 * 1024;
/// Per open file, GDAL keeps this many bytes of blocks.
const CACHE_SIZE_BYTES: usize = 16 * 1024 * 1024;

struct Entry {
    uri: String,
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    runtime: tokio::runtime::Handle,
    bytes_fetched: AtomicU64,
    requests: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Entry {
    /// Runs a store request from a GDAL (blocking) thread. The request runs as a task on the
    /// runtime that registered the file, so this works from any thread without nesting
    /// runtimes; the calling thread just waits.
    fn fetch(&self, ranges: Vec<Range<u64>>) -> Result<Vec<Bytes>, String> {
        let store = Arc::clone(&self.store);
        let path = self.path.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let wanted: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        self.runtime.spawn(async move {
            let result = if ranges.len() == 1 {
                store.get_range(&path, ranges[0].clone()).await.map(|b| vec![b])
            } else {
                store.get_ranges(&path, &ranges).await
            };
            let _ = tx.send(result);
        });
        self.requests.fetch_add(1, Ordering::Relaxed);
        let result = rx.recv().map_err(|_| "the runtime shut down during a read".to_owned())?.map_err(|e| e.to_string());
        match &result {
            Ok(_) => {
                self.bytes_fetched.fetch_add(wanted, Ordering::Relaxed);
            }
            Err(message) => {
                tracing::warn!(uri = %self.uri, error = %message, "Object store read failed.");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.clone());
            }
        }
        result
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
    /// Registers the object at `location` (one HEAD request for its size).
    ///
    /// # Errors
    /// [`OperatorError::Storage`] when the object is missing or the store fails;
    /// [`OperatorError::InvalidLocation`] when GDAL's plugin cannot be installed.
    pub async fn open(location: &Location) -> Result<Self, OperatorError> {
        install().map_err(|reason| OperatorError::InvalidLocation { location: location.url(), reason })?;
        let meta = location.store().head(location.path()).await.map_err(|source| OperatorError::Storage { uri: location.url(), source })?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // Keep the file name so GDAL can pick drivers by extension (.jp2, .vrt, ...).
        let name = location.file_name().unwrap_or("object");
        let key = format!("{id}/{name}");
        let vsi_path = format!("{PREFIX}{key}");
        let entry = Arc::new(Entry {
            uri: location.url(),
            store: Arc::clone(location.store()),
            path: location.path().clone(),
            size: meta.size,
            runtime: tokio::runtime::Handle::current(),
            bytes_fetched: AtomicU64::new(0),
            requests: AtomicU64::new(0),
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

    /// Requests made to the store so far.
    pub fn requests(&self) -> u64 {
        self.entry.requests.load(Ordering::Relaxed)
    }

    /// The last store error, if a read failed — GDAL only reports "read error", this says why.
    pub fn last_error(&self) -> Option<String> {
        self.entry.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
    let Ok(mut parts) = f.entry.fetch(vec![f.position..end]) else { return 0 };
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
