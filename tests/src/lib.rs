//! Real services for end-to-end tests: a nisshi Kafka-protocol broker and a moto S3 server,
//! each started on a free 127.0.0.1 port, awaited until it answers, and stopped on drop.
//!
//! Binaries come from `scripts/setup.sh`: nisshi from the tool cache outside the checkout
//! (`$STRATA_CACHE`, default `~/.cache/strata`), moto from the project venv. `STRATA_NISSHI_BIN`
//! and `STRATA_MOTO_BIN` override either.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use object_store::{aws::AmazonS3Builder, ObjectStore};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
};

/// Why a service could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The service binary is not installed.
    #[error("{service} binary not found at `{}`\nhint: run `bash scripts/setup.sh` (or set {env})", path.display())]
    NotInstalled {
        /// Service name.
        service: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The variable that overrides the path.
        env: &'static str,
    },
    /// Starting the process failed.
    #[error("cannot start {service}: {source}")]
    Spawn {
        /// Service name.
        service: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The service did not become ready in time.
    #[error("{service} did not become ready on {addr} within {timeout:?}; its log ends with:\n{log_tail}")]
    NotReady {
        /// Service name.
        service: &'static str,
        /// Address it should listen on.
        addr: SocketAddr,
        /// How long we waited.
        timeout: Duration,
        /// The last lines it printed.
        log_tail: String,
    },
    /// Talking to a started service failed.
    #[error("{service}: {message}")]
    Protocol {
        /// Service name.
        service: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// The workspace root (where `.venv` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn tool_cache() -> PathBuf {
    std::env::var_os("STRATA_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".cache/strata")
    })
}

fn locate(service: &'static str, env: &'static str, default: PathBuf) -> Result<PathBuf, ServiceError> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or(default);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ServiceError::NotInstalled { service, path, env })
    }
}

/// The broker's version, as `scripts/setup.sh` builds it (`NISSHI_VERSION`).
pub const NISSHI_VERSION: &str = "0.8.1";

/// The nisshi binary: `STRATA_NISSHI_BIN`, else the one `scripts/setup.sh --tests` built.
fn nisshi_program() -> Result<PathBuf, ServiceError> {
    let default = tool_cache().join(format!("tools/nisshi-{NISSHI_VERSION}/bin/nisshi"));
    locate("nisshi", "STRATA_NISSHI_BIN", default)
}

/// A free TCP port on 127.0.0.1. Another process could take it before the service binds it;
/// readiness checks then fail loudly rather than talk to a stranger.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// A child process whose stdout/stderr go to a log file, killed on drop.
struct ServiceProcess {
    service: &'static str,
    child: Child,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl ServiceProcess {
    fn spawn(service: &'static str, program: &Path, args: &[String]) -> Result<Self, ServiceError> {
        Self::spawn_with_env(service, program, args, &[])
    }

    fn spawn_with_env(service: &'static str, program: &Path, args: &[String], env: &[(String, String)]) -> Result<Self, ServiceError> {
        let spawn_err = |source| ServiceError::Spawn { service, source };
        let log_dir = tempfile::tempdir().map_err(spawn_err)?;
        let log_path = log_dir.path().join(format!("{service}.log"));
        let log = std::fs::File::create(&log_path).map_err(spawn_err)?;
        let log_err = log.try_clone().map_err(spawn_err)?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        Ok(Self { service, child, log_path, _log_dir: log_dir })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Polls `probe` until it succeeds, the process exits, or `timeout` passes.
    async fn wait_ready<F, Fut>(&mut self, addr: SocketAddr, timeout: Duration, mut probe: F) -> Result<(), ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if probe().await {
                return Ok(());
            }
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                return Err(ServiceError::NotReady { service: self.service, addr, timeout, log_tail: self.log_tail() });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A nisshi broker (tansu's successor) with in-memory storage, or with its log on an S3 server
/// (then it can be restarted and keeps its topics, messages and committed offsets).
pub struct NisshiBroker {
    addr: SocketAddr,
    // Held for its Drop: the broker lives exactly as long as this value.
    _process: ServiceProcess,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl NisshiBroker {
    /// Starts a broker on a free loopback port and waits until it answers metadata requests.
    ///
    /// # Errors
    /// When nisshi is not installed or does not become ready within 60 s.
    pub async fn start() -> Result<Self, ServiceError> {
        Self::start_advertising(None).await
    }

    /// Starts a broker that tells clients to connect to `advertised` (a [`TcpProxy`] in front
    /// of it, so that every connection goes through the proxy) instead of its own address.
    ///
    /// # Errors
    /// As [`NisshiBroker::start`].
    pub async fn start_advertising(advertised: Option<SocketAddr>) -> Result<Self, ServiceError> {
        Self::launch(advertised, "memory://nisshi/", Vec::new()).await
    }

    /// Starts a broker storing everything in `bucket` on `s3` (which must exist), so that
    /// [`NisshiBroker::start_again`] brings it back with its data.
    ///
    /// # Errors
    /// As [`NisshiBroker::start`].
    pub async fn start_on_s3(s3: &S3Server, bucket: &str) -> Result<Self, ServiceError> {
        let env = [
            ("AWS_ENDPOINT", s3.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ];
        Self::launch(None, &format!("s3://{bucket}/"), env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()).await
    }

    /// Stops the broker (SIGKILL), waits `down`, and starts it again on the same port with the
    /// same storage.
    ///
    /// # Errors
    /// When it does not come back within 60 s.
    pub async fn start_again(&mut self, down: Duration) -> Result<(), ServiceError> {
        let _ = self._process.child.kill().await;
        tokio::time::sleep(down).await;
        let program = nisshi_program()?;
        let mut process = ServiceProcess::spawn_with_env("nisshi", &program, &self.args, &self.env)?;
        let bootstrap = self.addr.to_string();
        process
            .wait_ready(self.addr, Duration::from_secs(60), || {
                let bootstrap = bootstrap.clone();
                async move { kafka_metadata_ok(&bootstrap).await }
            })
            .await?;
        self._process = process;
        Ok(())
    }

    async fn launch(advertised: Option<SocketAddr>, storage: &str, env: Vec<(String, String)>) -> Result<Self, ServiceError> {
        let program = nisshi_program()?;
        let port = free_port().map_err(|source| ServiceError::Spawn { service: "nisshi", source })?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let url = format!("tcp://{addr}");
        let args = [
            "broker".to_owned(),
            "--listener-url".to_owned(),
            url.clone(),
            "--advertised-listener-url".to_owned(),
            advertised.map_or(url, |a| format!("tcp://{a}")),
            "--storage-engine".to_owned(),
            storage.to_owned(),
        ];
        let mut process = ServiceProcess::spawn_with_env("nisshi", &program, &args, &env)?;
        let bootstrap = addr.to_string();
        process
            .wait_ready(addr, Duration::from_secs(60), || {
                let bootstrap = bootstrap.clone();
                async move { kafka_metadata_ok(&bootstrap).await }
            })
            .await?;
        Ok(Self { addr, _process: process, args: args.to_vec(), env })
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.addr.to_string()
    }

    /// The broker's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A TCP forwarder on a free loopback port in front of a service, to cut it off (an outage:
/// connections reset, new ones refused) and bring it back, as a network partition would.
pub struct TcpProxy {
    addr: SocketAddr,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl TcpProxy {
    /// A proxy on a free port; it forwards nothing until [`TcpProxy::connect`].
    ///
    /// # Errors
    /// When no port can be found.
    pub fn new() -> Result<Self, ServiceError> {
        let port = free_port().map_err(|source| ServiceError::Spawn { service: "proxy", source })?;
        Ok(Self { addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)), task: std::sync::Mutex::new(None) })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts forwarding to `upstream` (again, after [`TcpProxy::cut`]).
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn connect(&self, upstream: SocketAddr) -> Result<(), ServiceError> {
        let bind_err = |source| ServiceError::Spawn { service: "proxy", source };
        // The port was just released by `cut`: retry the bind briefly.
        let mut attempts = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(bind_err(e)),
            }
        };
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        *self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
        Ok(())
    }

    /// The outage: the port closes and every forwarded connection drops.
    pub fn cut(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            // Aborting the accept loop drops the listener and the JoinSet, which aborts every
            // connection task and closes its sockets.
            task.abort();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn kafka_metadata_ok(bootstrap: &str) -> bool {
    use rdkafka::{
        config::ClientConfig,
        consumer::{BaseConsumer, Consumer},
    };
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: Result<BaseConsumer, _> = ClientConfig::new().set("bootstrap.servers", &bootstrap).set("log_level", "0").create();
        consumer.map(|c| c.fetch_metadata(None, Duration::from_millis(1000)).is_ok()).unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A moto S3 server (in memory, no credential checks).
pub struct S3Server {
    addr: SocketAddr,
    // Held for its Drop: the server lives exactly as long as this value.
    _process: ServiceProcess,
}

impl S3Server {
    /// Starts moto_server on a free loopback port and waits until it answers HTTP.
    ///
    /// # Errors
    /// When moto is not installed or does not become ready within 60 s.
    pub async fn start() -> Result<Self, ServiceError> {
        let default = workspace_root().join(".venv/bin/moto_server");
        let program = locate("moto_server", "STRATA_MOTO_BIN", default)?;
        let port = free_port().map_err(|source| ServiceError::Spawn { service: "moto_server", source })?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let args = ["-H".to_owned(), "127.0.0.1".to_owned(), "-p".to_owned(), port.to_string()];
        let mut process = ServiceProcess::spawn("moto_server", &program, &args)?;
        process
            .wait_ready(
                addr,
                Duration::from_secs(60),
                || async move { matches!(http_request(addr, "GET", "/", &[], &[]).await, Ok((200, _))) },
            )
            .await?;
        Ok(Self { addr, _process: process })
    }

    /// The endpoint URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a bucket.
    ///
    /// # Errors
    /// When the server refuses.
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), ServiceError> {
        match http_request(self.addr, "PUT", &format!("/{bucket}"), &[], &[]).await {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => Err(ServiceError::Protocol {
                service: "moto_server",
                message: format!("creating bucket `{bucket}` returned HTTP {status}: {body}"),
            }),
            Err(e) => Err(ServiceError::Protocol { service: "moto_server", message: e.to_string() }),
        }
    }

    /// Puts an object anyone may read (ACL `public-read`), as a bucket behind a public web
    /// endpoint serves it: plain `http://` GETs without credentials then succeed.
    ///
    /// # Errors
    /// When the server refuses.
    pub async fn put_public(&self, bucket: &str, key: &str, body: &[u8]) -> Result<(), ServiceError> {
        match http_request(self.addr, "PUT", &format!("/{bucket}/{key}"), &[("x-amz-acl", "public-read")], body).await {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => Err(ServiceError::Protocol {
                service: "moto_server",
                message: format!("putting `{bucket}/{key}` returned HTTP {status}: {body}"),
            }),
            Err(e) => Err(ServiceError::Protocol { service: "moto_server", message: e.to_string() }),
        }
    }

    /// An object_store client for `bucket` on this server.
    ///
    /// # Errors
    /// When the client cannot be built.
    pub fn store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        let store = AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()?;
        Ok(Arc::new(store))
    }
}

/// A minimal HTTP/1.1 request over loopback, enough for readiness checks and bucket creation
/// without pulling an HTTP client into the tests.
async fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await??;
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::{workspace_root, NISSHI_VERSION};

    /// The tests, the local cluster and the streaming bench start the broker that setup builds,
    /// so bumping its version in one place and not the others fails here, not as a missing
    /// binary on the next fresh machine.
    #[test]
    fn every_script_starts_the_broker_version_setup_builds() {
        let root = workspace_root();
        let setup = std::fs::read_to_string(root.join("scripts/setup.sh")).unwrap();
        assert!(
            setup.contains(&format!("\nNISSHI_VERSION={NISSHI_VERSION}\n")),
            "scripts/setup.sh builds another version than {NISSHI_VERSION}"
        );
        for script in ["deploy/local/up.sh", "benches/streaming/compare.sh"] {
            let text = std::fs::read_to_string(root.join(script)).unwrap();
            assert!(
                text.contains(&format!("/tools/nisshi-{NISSHI_VERSION}/bin/nisshi")),
                "{script} starts another broker than nisshi {NISSHI_VERSION}"
            );
        }
    }
}
