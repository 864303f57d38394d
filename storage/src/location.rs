//! One way to name data anywhere: a URL (`s3://bucket/prefix`, `file:///abs/path`,
//! `https://host/path` read-only, `memory://name/path`) or a plain local path, resolved to an
//! object store and a path in it.
//!
//! S3 stores are configured from the standard environment (`AWS_ENDPOINT_URL`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`, ...), so
//! S3-compatible servers work by setting an endpoint. Stores are cached per bucket (and per
//! memory namespace), so every stage shares connections and `memory://` data.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use object_store::{aws::AmazonS3Builder, local::LocalFileSystem, memory::InMemory, path::Path, ObjectStore};

use crate::StorageError;

/// A resolved location: a store, a path inside it, and the URL it came from.
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// `scheme://authority` prefix used to print URLs of children.
    root: String,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

impl Location {
    /// A location in a store built elsewhere (tests, embedding applications); `root` is the
    /// URL prefix its paths are printed under, e.g. `s3://bucket`.
    pub fn new(store: Arc<dyn ObjectStore>, root: impl Into<String>, path: Path) -> Self {
        Self { store, path, root: root.into().trim_end_matches('/').to_owned() }
    }

    /// The store holding this location.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The path inside the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The location as a URL, e.g. `s3://bucket/tiles/r0_c0.png`.
    pub fn url(&self) -> String {
        format!("{}/{}", self.root, self.path)
    }

    /// A location below this one; `child` may contain `/`.
    pub fn join(&self, child: &str) -> Self {
        let mut path = self.path.clone();
        for part in child.split('/').filter(|p| !p.is_empty()) {
            path = path.clone().join(part);
        }
        Self { store: Arc::clone(&self.store), path, root: self.root.clone() }
    }

    /// The location of another path in the same store.
    pub fn with_path(&self, path: Path) -> Self {
        Self { store: Arc::clone(&self.store), path, root: self.root.clone() }
    }

    /// The last path segment (the file name), if any.
    pub fn file_name(&self) -> Option<&str> {
        self.path.filename()
    }

    /// Whether this is on the local file system (and so has a real path).
    pub fn local_path(&self) -> Option<std::path::PathBuf> {
        self.root.starts_with("file://").then(|| std::path::PathBuf::from(format!("/{}", self.path)))
    }
}

/// Makes [`resolve`] answer every URL under `root` — `scheme://authority`, e.g.
/// `s3://bucket` or `faulty://scenes` — with `store`, ahead of the built-in schemes, for the
/// life of the process (a later registration of the same root replaces it). This is how an
/// embedding application or a test hands the stages a store built in code (a wrapper adding
/// limits, metrics or injected faults) while requests keep naming data by URL.
///
/// # Errors
/// [`StorageError::InvalidLocation`] when `root` is not `scheme://authority` with a non-empty
/// authority and no path (local files cannot be redirected).
pub fn register_store(root: &str, store: Arc<dyn ObjectStore>) -> Result<(), StorageError> {
    let invalid = |reason: &str| StorageError::InvalidLocation { location: root.to_owned(), reason: reason.to_owned() };
    let root = root.trim_end_matches('/');
    let Some((scheme, authority)) = root.split_once("://") else {
        return Err(invalid("a store root is `scheme://authority`, e.g. `s3://bucket`"));
    };
    if scheme.is_empty() || authority.is_empty() || authority.contains('/') || scheme == "file" {
        return Err(invalid("a store root is `scheme://authority` with no path, e.g. `s3://bucket`, and not `file://`"));
    }
    registered().lock().unwrap_or_else(|p| p.into_inner()).insert(root.to_owned(), store);
    Ok(())
}

fn registered() -> &'static Mutex<HashMap<String, Arc<dyn ObjectStore>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

/// Resolves a URL or a local path. Roots given to [`register_store`] come first.
///
/// # Errors
/// [`StorageError::InvalidLocation`] for an unknown scheme, a malformed URL, or an S3 store
/// that cannot be configured.
pub fn resolve(location: &str) -> Result<Location, StorageError> {
    let invalid = |reason: String| StorageError::InvalidLocation { location: location.to_owned(), reason };
    let Some((scheme, rest)) = location.split_once("://") else {
        return resolve_local(location);
    };
    let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
    let root = format!("{scheme}://{authority}");
    if let Some(store) = registered().lock().unwrap_or_else(|p| p.into_inner()).get(&root).cloned() {
        return Ok(Location { store, path: parse_path(key).map_err(invalid)?, root });
    }
    match scheme {
        "file" => resolve_local(rest),
        "memory" => {
            let (namespace, key) = rest.split_once('/').unwrap_or((rest, ""));
            let store = memory_store(namespace);
            Ok(Location { store, path: parse_path(key).map_err(invalid)?, root: format!("memory://{namespace}") })
        }
        "s3" => {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("no bucket name".to_owned()));
            }
            let store = s3_store(bucket).map_err(|e| invalid(e.to_string()))?;
            Ok(Location { store, path: parse_path(key).map_err(invalid)?, root: format!("s3://{bucket}") })
        }
        "http" | "https" => {
            if authority.is_empty() {
                return Err(invalid("no host".to_owned()));
            }
            let store = http_store(&root).map_err(|e| invalid(e.to_string()))?;
            Ok(Location { store, path: parse_path(key).map_err(invalid)?, root })
        }
        other => Err(invalid(format!("unsupported scheme `{other}`; use a local path, file://, s3://, http(s):// or memory://"))),
    }
}

/// Resolves an href found in a document (a STAC item's asset) against the document's own
/// location, by RFC 3986 reference resolution as `url::Url::join` does it, whatever the
/// store: `./visual.tif` and `visual.tif` name a sibling, `../x.tif` a file one folder up
/// (never above the bucket or the file-system root), `/x.tif` a key from the root of the
/// document's own store, and an href with a scheme stands alone. Dot segments are removed
/// before the path reaches the store, so `s3://` keys never hold `.` or `..`. A local base
/// (a plain path) is taken as a `file://` URL; percent-escapes in the result are decoded.
///
/// # Errors
/// [`StorageError::InvalidLocation`] when the href is relative and `base` is `None`, when
/// either is not a valid URL, or when the result cannot be resolved ([`resolve`]).
pub fn resolve_href(href: &str, base: Option<&str>) -> Result<Location, StorageError> {
    let invalid = |reason: String| StorageError::InvalidLocation { location: href.to_owned(), reason };
    if let Ok(absolute) = url::Url::parse(href) {
        if href.contains("://") {
            return resolve_url(&absolute).map_err(invalid);
        }
    }
    let Some(base) = base else {
        if href.starts_with('/') {
            return resolve(href); // a local absolute path, with nothing to be relative to
        }
        return Err(invalid("the href is relative and the document's own location is unknown".to_owned()));
    };
    let base_url = if base.contains("://") {
        url::Url::parse(base).map_err(|e| invalid(format!("the document's location `{base}` is not a URL: {e}")))?
    } else {
        let path = std::path::Path::new(base);
        let absolute =
            if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().map_err(|e| invalid(e.to_string()))?.join(path) };
        url::Url::from_file_path(&absolute).map_err(|()| invalid(format!("`{}` is not an absolute local path", absolute.display())))?
    };
    let joined = base_url.join(href).map_err(|e| invalid(format!("cannot resolve it against `{base}`: {e}")))?;
    resolve_url(&joined).map_err(invalid)
}

/// A parsed URL to a location: its dot segments already removed, its path percent-decoded.
fn resolve_url(url: &url::Url) -> Result<Location, String> {
    if url.scheme() == "file" {
        let path = url.to_file_path().map_err(|()| format!("`{url}` is not a local file path"))?;
        return resolve_local(path.to_str().ok_or_else(|| format!("`{url}` is not valid UTF-8"))?).map_err(|e| e.to_string());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{url}` has a query or fragment, which object stores do not take"));
    }
    let key = Path::from_url_path(url.path()).map_err(|e| e.to_string())?;
    resolve(&format!("{}/{key}", &url[..url::Position::BeforePath])).map_err(|e| e.to_string())
}

fn parse_path(key: &str) -> Result<Path, String> {
    Path::parse(key.trim_matches('/')).map_err(|e| e.to_string())
}

fn resolve_local(path: &str) -> Result<Location, StorageError> {
    let invalid = |reason: String| StorageError::InvalidLocation { location: path.to_owned(), reason };
    let as_path = std::path::Path::new(path);
    let absolute = if as_path.is_absolute() {
        as_path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| invalid(e.to_string()))?.join(as_path)
    };
    // Normalise `.`/`..` lexically: the target may not exist yet (an output folder).
    let mut normal = std::path::PathBuf::from("/");
    for component in absolute.components() {
        match component {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::Normal(part) => normal.push(part),
            _ => {}
        }
    }
    let key = normal.to_str().ok_or_else(|| invalid("path is not valid UTF-8".to_owned()))?;
    Ok(Location { store: local_store(), path: parse_path(key).map_err(invalid)?, root: "file://".to_owned() })
}

fn local_store() -> Arc<dyn ObjectStore> {
    static STORE: OnceLock<Arc<dyn ObjectStore>> = OnceLock::new();
    Arc::clone(STORE.get_or_init(|| Arc::new(LocalFileSystem::new().with_automatic_cleanup(true))))
}

fn memory_store(namespace: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let mut stores = STORES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    Arc::clone(stores.entry(namespace.to_owned()).or_insert_with(|| Arc::new(InMemory::new())))
}

fn s3_store(bucket: &str) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let mut stores = STORES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(store) = stores.get(bucket) {
        return Ok(Arc::clone(store));
    }
    let store: Arc<dyn ObjectStore> = Arc::new(AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(patient_retries()).build()?);
    stores.insert(bucket.to_owned(), Arc::clone(&store));
    Ok(store)
}

/// A read-only store for `http(s)://host[:port]`: scenes and STAC assets served by a plain web
/// server (a CDN, a STAC API's asset host, a bucket's public URL), read by HTTP range requests
/// as object_store's HTTP store makes them (HEAD for the size, then `Range: bytes=…`). Writing
/// to it is not supported by Strata (tiles and tables need a store that takes PUTs); the server
/// must answer ranged GETs with `206 Partial Content`, as web servers and object stores do.
fn http_store(root: &str) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let mut stores = STORES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(store) = stores.get(root) {
        return Ok(Arc::clone(store));
    }
    let options = object_store::ClientOptions::new().with_allow_http(root.starts_with("http://"));
    let store: Arc<dyn ObjectStore> =
        Arc::new(object_store::http::HttpBuilder::new().with_url(root).with_client_options(options).with_retry(patient_retries()).build()?);
    stores.insert(root.to_owned(), Arc::clone(&store));
    Ok(store)
}

/// How S3 requests ride out an outage: object_store's default gives up after 10 quick
/// retries (about 4 s when nothing answers), so a store restart or a network blip of a few
/// seconds would fail scenes. These retries grow to 8 s apart and last up to 2 minutes;
/// refused requests (not found, denied) are still not retried.
fn patient_retries() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig { init_backoff: Duration::from_millis(250), max_backoff: Duration::from_secs(8), base: 3.0 },
        max_retries: 20,
        retry_timeout: Duration::from_secs(120),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_and_file_urls_resolve_to_the_same_place() {
        let a = resolve("/data/scenes/../scenes/x.tif").unwrap();
        let b = resolve("file:///data/scenes/x.tif").unwrap();
        assert_eq!(a.url(), "file:///data/scenes/x.tif");
        assert_eq!(a.url(), b.url());
        assert_eq!(a.local_path().unwrap(), std::path::PathBuf::from("/data/scenes/x.tif"));
        assert_eq!(a.join("tiles/r0.png").url(), "file:///data/scenes/x.tif/tiles/r0.png");
    }

    #[test]
    fn memory_namespaces_are_shared_and_urls_round_trip() {
        let a = resolve("memory://ns1/tables").unwrap();
        let b = resolve("memory://ns1/other").unwrap();
        assert!(Arc::ptr_eq(a.store(), b.store()));
        assert_eq!(a.url(), "memory://ns1/tables");
        assert!(!Arc::ptr_eq(a.store(), resolve("memory://ns2").unwrap().store()));
    }

    #[test]
    fn registered_stores_answer_their_root_first() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        register_store("custom://bucket-a/", Arc::clone(&store)).unwrap();
        let location = resolve("custom://bucket-a/scenes/x.tif").unwrap();
        assert!(Arc::ptr_eq(location.store(), &store));
        assert_eq!(location.url(), "custom://bucket-a/scenes/x.tif");
        assert!(resolve("custom://bucket-b/x.tif").is_err(), "other authorities are not redirected");
        // Built-in schemes can be overridden per authority; local files cannot.
        register_store("memory://overridden", Arc::clone(&store)).unwrap();
        assert!(Arc::ptr_eq(resolve("memory://overridden/k").unwrap().store(), &store));
        for bad in ["file://", "file://host", "custom://", "custom://a/b", "no-scheme"] {
            assert!(register_store(bad, Arc::clone(&store)).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_hrefs_resolve_against_the_document_for_every_store() {
        let item = "s3://ard/sample-001/10/2024-05-01/item.json";
        let cases = [
            (item, "./visual.tif", "s3://ard/sample-001/10/2024-05-01/visual.tif"),
            (item, "visual.tif", "s3://ard/sample-001/10/2024-05-01/visual.tif"),
            (item, "../x.tif", "s3://ard/sample-001/10/x.tif"),
            (item, "./a/../b/./c.tif", "s3://ard/sample-001/10/2024-05-01/b/c.tif"),
            (item, "/root.tif", "s3://ard/root.tif"),
            (item, "../../../../../up.tif", "s3://ard/up.tif"),
            (item, "s3://other/k/./y.tif", "s3://other/k/y.tif"),
            (item, "./with%20space.tif", "s3://ard/sample-001/10/2024-05-01/with space.tif"),
            ("memory://ns-href/items/one/item.json", "../two/b.tif", "memory://ns-href/items/two/b.tif"),
            ("file:///data/items/item.json", "./my file.tif", "file:///data/items/my file.tif"),
            ("/data/items/item.json", "../scenes/x.tif", "file:///data/scenes/x.tif"),
            ("/data/items/item.json", "/abs/x.tif", "file:///abs/x.tif"),
        ];
        for (base, href, want) in cases {
            let got = resolve_href(href, Some(base)).unwrap_or_else(|e| panic!("{href} against {base}: {e}"));
            assert_eq!(got.url(), want, "{href} against {base}");
        }
        assert_eq!(resolve_href("/abs/x.tif", None).unwrap().url(), "file:///abs/x.tif");
        assert!(resolve_href("./x.tif", None).unwrap_err().to_string().contains("relative"));
    }

    #[test]
    fn unknown_schemes_are_refused_with_a_hint() {
        let err = resolve("ftp://host/file.tif").unwrap_err();
        assert!(err.to_string().contains("use a local path, file://, s3://, http(s):// or memory://"), "{err}");
        assert!(resolve("s3:///key").is_err());
    }
}
