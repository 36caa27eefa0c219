//! OTLP exporter: OTLP/gRPC (tonic) or OTLP/HTTP with protobuf (hyper), both over
//! plain TCP or TLS (rustls), with the configured headers and optional gzip.
//!
//! One task per endpoint takes batches from its bounded queue and sends each as one
//! `ExportTraceServiceRequest`, encoded straight from the span model into a reused
//! buffer ([`super::encode`]) and sent as bytes (a retry resends the same bytes, it does
//! not re-encode or deep-copy the request). While the backend is down or failing with a
//! retryable code, the same batch is retried with jittered exponential backoff and new
//! spans keep accumulating in the queue (oldest dropped beyond its bound, counted), so
//! memory stays bounded. The first failure of an outage logs one warning saying what is
//! wrong and how to fix it; recovery logs one info line; individual retries log at debug
//! level only.
//!
//! Both transports report their outcome as a gRPC status: an OTLP/HTTP answer is mapped
//! to the code gRPC gives that HTTP status (429, 502, 503 and 504 are `Unavailable` or
//! `ResourceExhausted`, retryable as the OTLP specification says; other failures are
//! permanent), so retry, backoff and the log lines are one piece of code.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::{Buf as _, BufMut as _, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use rand::Rng as _;
use tokio::time::Instant;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::encode;
use super::queue::SpanQueue;
use super::OutputCounters;

/// The OTLP trace service's one method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A gRPC codec whose requests are already-encoded protobuf bytes and whose response is
/// decoded with prost: the service and its types stay opentelemetry-proto's.
#[derive(Clone, Copy, Default)]
struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        PreEncoded
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }

    /// A buffer that holds a whole request (at most [`MAX_REQUEST_BYTES`] plus the
    /// gRPC frame header) from the start: tonic's default of 8 KiB grew by
    /// reallocation, copying the request again at every step.
    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        tonic::codec::BufferSettings::new(MAX_REQUEST_BYTES + 1024, MAX_REQUEST_BYTES + 1024)
    }
}

impl Decoder for PreEncoded {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let resp = ExportTraceServiceResponse::decode(&mut *src)
            .map_err(|e| Status::internal(format!("cannot decode the collector's ExportTraceServiceResponse: {e}")))?;
        // Anything prost left (it reads the whole message) would be a framing bug.
        src.advance(src.remaining());
        Ok(Some(resp))
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Requests are cut to stay within 60 KiB: under the 64 KiB HTTP/2 flow-control window
/// a receiver grants before it grows it (and far under the usual 4 MiB gRPC message
/// limit). A larger request waits for the receiver's WINDOW_UPDATE, which some
/// receivers (rotel) send only after a delayed ACK: measured here, a 73 KB request took
/// 40–55 ms to rotel and a 36 KB one 0.7 ms, which capped export at about 20k spans/s.
const MAX_REQUEST_BYTES: usize = 60 * 1024;

/// The OTLP transport, in `OTEL_EXPORTER_OTLP_PROTOCOL`'s words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub enum Protocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    /// `grpc` or `http/protobuf`; `http/json` is refused with a hint.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            "http/json" => Err("OTLP protocol http/json is not supported: use grpc or http/protobuf".to_owned()),
            other => Err(format!("OTLP protocol `{other}` is unknown: use grpc or http/protobuf")),
        }
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Request body compression (`OTEL_EXPORTER_OTLP_COMPRESSION`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

impl Compression {
    /// `gzip` or `none`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "gzip" => Ok(Self::Gzip),
            "none" | "" => Ok(Self::None),
            other => Err(format!("OTLP compression `{other}` is unknown: use gzip or none")),
        }
    }
}

/// Where and how to send spans: flags, file and `OTEL_EXPORTER_OTLP_*` resolved
/// (see `config::Cli::otlp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpOptions {
    /// The whole URL requests go to: for OTLP/HTTP with its path (`/v1/traces`).
    pub endpoint: String,
    pub protocol: Protocol,
    /// Sent with every request (e.g. `authorization`). Names are lower-cased.
    pub headers: Vec<(String, String)>,
    /// Longest one export request may take.
    pub timeout: Duration,
    pub compression: Compression,
    /// PEM file of the CA certificates that sign the collector's certificate (for
    /// `https://`); without it the system's roots are trusted.
    pub certificate: Option<std::path::PathBuf>,
}

impl OtlpOptions {
    /// OTLP/gRPC to `endpoint` with the defaults.
    #[must_use]
    pub fn grpc(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            protocol: Protocol::Grpc,
            headers: Vec::new(),
            timeout: REQUEST_TIMEOUT,
            compression: Compression::None,
            certificate: None,
        }
    }
}

/// The default timeout of one export request (the specification's 10 s).
pub const DEFAULT_TIMEOUT: Duration = REQUEST_TIMEOUT;

/// How the OTLP task runs; built from [`super::ExportConfig`].
#[derive(Clone, Debug)]
pub(crate) struct OtlpSettings {
    /// Normalized endpoint URI (always with a scheme).
    pub endpoint: String,
    pub protocol: Protocol,
    pub headers: Vec<(String, String)>,
    pub compression: Compression,
    pub certificate: Option<std::path::PathBuf>,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_request_bytes: usize,
}

impl OtlpSettings {
    /// Validates the endpoint (`http://host:port` or `https://host:port`; `http://` is
    /// assumed when no scheme is given) and the headers.
    pub(crate) fn new(opts: &OtlpOptions, batch_size: usize, batch_timeout: Duration) -> anyhow::Result<Self> {
        let endpoint = normalize_endpoint(&opts.endpoint)?;
        for (name, value) in &opts.headers {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| anyhow::anyhow!("OTLP header name `{name}` is not a valid HTTP header name"))?;
            http::HeaderValue::from_str(value).map_err(|_| {
                anyhow::anyhow!("OTLP header `{name}`: its value has characters HTTP does not allow (control characters or non-ASCII)")
            })?;
        }
        if let Some(path) = &opts.certificate {
            if !endpoint.starts_with("https://") {
                log::warn!(
                    "OTLP certificate {} is ignored: the endpoint {endpoint} is not https:// (use https:// to export over TLS)",
                    path.display()
                );
            }
        }
        Ok(Self {
            endpoint,
            protocol: opts.protocol,
            headers: opts.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect(),
            compression: opts.compression,
            certificate: opts.certificate.clone(),
            batch_size: batch_size.max(1),
            batch_timeout,
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: opts.timeout,
            backoff_initial: BACKOFF_INITIAL,
            backoff_max: BACKOFF_MAX,
            max_request_bytes: MAX_REQUEST_BYTES,
        })
    }

    fn is_tls(&self) -> bool {
        self.endpoint.starts_with("https://")
    }
}

fn normalize_endpoint(raw: &str) -> anyhow::Result<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        bail!("OTLP endpoint is empty; expected e.g. http://127.0.0.1:4317");
    }
    let uri = if raw.contains("://") { raw.to_owned() } else { format!("http://{raw}") };
    let scheme = uri.split("://").next().unwrap_or_default().to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        bail!("OTLP endpoint {raw}: unsupported scheme {scheme:?}; expected http://host:port or https://host:port");
    }
    let parsed: http::Uri = uri
        .parse()
        .with_context(|| format!("OTLP endpoint {raw}: not a valid URI; expected e.g. http://127.0.0.1:4317"))?;
    if parsed.host().is_none_or(str::is_empty) {
        bail!("OTLP endpoint {raw}: no host; expected e.g. http://127.0.0.1:4317");
    }
    Ok(uri)
}

/// The PEM certificates of `path`, for a one-line error naming the file.
fn read_pem(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| {
        format!(
            "cannot read the OTLP CA certificate file {} (--otlp-certificate / OTEL_EXPORTER_OTLP_CERTIFICATE)",
            path.display()
        )
    })?;
    Ok(pem)
}

/// The roots a TLS connection to the collector trusts: the CA file's certificates, or
/// else the system's.
fn root_store(certificate: Option<&std::path::Path>) -> anyhow::Result<rustls::RootCertStore> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match certificate {
        Some(path) => {
            let pem = read_pem(path)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| anyhow::anyhow!("OTLP CA certificate file {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| anyhow::anyhow!("OTLP CA certificate file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                bail!("OTLP CA certificate file {} holds no PEM certificate", path.display());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                bail!(
                    "no system CA certificates found for the https:// OTLP endpoint: give the collector's CA with --otlp-certificate FILE"
                );
            }
        }
    }
    Ok(roots)
}

/// gzip of a whole request body.
fn gzip(body: &[u8]) -> Bytes {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(body);
    Bytes::from(enc.finish().unwrap_or_default())
}

/// The HTTP client of the OTLP/HTTP transport: pooled keep-alive HTTP/1.1 connections,
/// TLS with rustls when the endpoint is `https://`.
type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<Bytes>,
>;

/// How requests leave.
enum Transport {
    Grpc { client: tonic::client::Grpc<Channel>, metadata: MetadataMap },
    Http { client: Box<HttpClient>, uri: http::Uri, headers: http::HeaderMap, gzip: bool, timeout: Duration },
}

impl Transport {
    fn new(settings: &OtlpSettings) -> anyhow::Result<Self> {
        match settings.protocol {
            Protocol::Grpc => {
                let mut endpoint = Endpoint::from_shared(settings.endpoint.clone())
                    .with_context(|| format!("OTLP endpoint {}", settings.endpoint))?
                    .connect_timeout(settings.connect_timeout)
                    .timeout(settings.request_timeout)
                    .tcp_nodelay(true);
                if settings.is_tls() {
                    let tls = match &settings.certificate {
                        Some(path) => {
                            // Checked here, so that a bad file is an error at start, not at
                            // the first connection.
                            root_store(Some(path))?;
                            ClientTlsConfig::new()
                                .ca_certificate(tonic::transport::Certificate::from_pem(read_pem(path)?))
                        }
                        None => ClientTlsConfig::new().with_native_roots(),
                    };
                    endpoint = endpoint
                        .tls_config(tls)
                        .with_context(|| format!("OTLP endpoint {}: TLS set-up failed", settings.endpoint))?;
                }
                let mut client = tonic::client::Grpc::new(endpoint.connect_lazy());
                if settings.compression == Compression::Gzip {
                    client = client
                        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                let mut metadata = MetadataMap::new();
                for (name, value) in &settings.headers {
                    let key = MetadataKey::from_bytes(name.as_bytes())
                        .map_err(|_| anyhow::anyhow!("OTLP header name `{name}` is not a valid gRPC metadata key"))?;
                    let value = MetadataValue::try_from(value.as_str())
                        .map_err(|_| anyhow::anyhow!("OTLP header `{name}`: its value is not valid gRPC metadata"))?;
                    metadata.append(key, value);
                }
                Ok(Self::Grpc { client, metadata })
            }
            Protocol::HttpProtobuf => {
                let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
                http.set_connect_timeout(Some(settings.connect_timeout));
                http.set_nodelay(true);
                http.enforce_http(false);
                let builder = hyper_rustls::HttpsConnectorBuilder::new();
                let connector = if settings.is_tls() {
                    let provider = Arc::new(rustls::crypto::ring::default_provider());
                    let tls = rustls::ClientConfig::builder_with_provider(provider)
                        .with_safe_default_protocol_versions()
                        .context("OTLP TLS: no protocol version in common with rustls")?
                        .with_root_certificates(root_store(settings.certificate.as_deref())?)
                        .with_no_client_auth();
                    builder.with_tls_config(tls).https_only().enable_http1().wrap_connector(http)
                } else {
                    // Plain http://: the TLS layer is never used, but the type is one.
                    let provider = Arc::new(rustls::crypto::ring::default_provider());
                    let tls = rustls::ClientConfig::builder_with_provider(provider)
                        .with_safe_default_protocol_versions()
                        .context("OTLP TLS: no protocol version in common with rustls")?
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth();
                    builder.with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http)
                };
                let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(MAX_IN_FLIGHT)
                    .build(connector);
                let uri: http::Uri = settings
                    .endpoint
                    .parse()
                    .with_context(|| format!("OTLP endpoint {}: not a valid URI", settings.endpoint))?;
                let mut headers = http::HeaderMap::new();
                headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-protobuf"));
                headers.insert(http::header::USER_AGENT, http::HeaderValue::from_static(USER_AGENT));
                if settings.compression == Compression::Gzip {
                    headers.insert(http::header::CONTENT_ENCODING, http::HeaderValue::from_static("gzip"));
                }
                for (name, value) in &settings.headers {
                    // Checked in OtlpSettings::new.
                    if let (Ok(k), Ok(v)) =
                        (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_str(value))
                    {
                        headers.append(k, v);
                    }
                }
                Ok(Self::Http {
                    client: Box::new(client),
                    uri,
                    headers,
                    gzip: settings.compression == Compression::Gzip,
                    timeout: settings.request_timeout,
                })
            }
        }
    }

    /// Sends one encoded request; the answer, or why there is none, as a gRPC status.
    async fn call(&self, req: Bytes) -> Result<ExportTraceServiceResponse, Status> {
        match self {
            Self::Grpc { client, metadata } => {
                let mut client = client.clone();
                client.ready().await.map_err(|e| Status::unavailable(format!("the OTLP channel is not ready: {e}")))?;
                let mut request = tonic::Request::new(req);
                if !metadata.is_empty() {
                    *request.metadata_mut() = metadata.clone();
                }
                let resp = client.unary(request, PathAndQuery::from_static(EXPORT_PATH), PreEncoded).await?;
                Ok(resp.into_inner())
            }
            Self::Http { client, uri, headers, gzip: compress, timeout } => {
                let body = if *compress { gzip(&req) } else { req };
                let mut request = http::Request::new(http_body_util::Full::new(body));
                *request.method_mut() = http::Method::POST;
                *request.uri_mut() = uri.clone();
                *request.headers_mut() = headers.clone();
                let answer = async {
                    let resp = client.request(request).await.map_err(|e| transport_status(&e))?;
                    let status = resp.status();
                    let content_type = resp
                        .headers()
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(
                        resp.into_body(),
                        MAX_RESPONSE_BYTES,
                    ))
                    .await
                    .map_err(|e| Status::unavailable(format!("reading the collector's answer failed: {e}")))?
                    .to_bytes();
                    http_answer(status, &content_type, &body)
                };
                match tokio::time::timeout(*timeout, answer).await {
                    Ok(r) => r,
                    Err(_) => Err(Status::deadline_exceeded(format!("no answer within {timeout:?}"))),
                }
            }
        }
    }
}

/// `User-Agent` of OTLP/HTTP requests, as the SDKs' exporters send theirs.
const USER_AGENT: &str = concat!("ghostwire/", env!("CARGO_PKG_VERSION"));

/// A collector's answer is a small protobuf message; more than this is not an OTLP
/// collector talking.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// `google.rpc.Status`, which an OTLP/HTTP collector returns in a failed answer's body.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// An OTLP/HTTP answer as a gRPC outcome: 2xx decodes the (possibly empty)
/// `ExportTraceServiceResponse`; failures map the way gRPC maps HTTP statuses, so that
/// 429, 502, 503 and 504 are retried and the rest is not.
fn http_answer(
    status: http::StatusCode,
    content_type: &str,
    body: &[u8],
) -> Result<ExportTraceServiceResponse, Status> {
    if status.is_success() {
        return ExportTraceServiceResponse::decode(body).map_err(|e| {
            Status::internal(format!(
                "the collector answered {status} with a body that is not an ExportTraceServiceResponse: {e}"
            ))
        });
    }
    let detail = if content_type.starts_with("application/x-protobuf") {
        RpcStatus::decode(body).map(|s| s.message).unwrap_or_default()
    } else if content_type.starts_with("text/html") {
        // A proxy's error page: its status line says it all.
        String::new()
    } else {
        String::from_utf8_lossy(&body[..body.len().min(200)]).split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let code = match status.as_u16() {
        400 | 413 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 | 405 => Code::Unimplemented,
        429 => Code::ResourceExhausted,
        502..=504 => Code::Unavailable,
        500..=599 => Code::Internal,
        _ => Code::FailedPrecondition,
    };
    let message = if detail.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {detail}") };
    Err(Status::new(code, message))
}

/// A request that got no answer: the connection failed or broke. Retryable.
fn transport_status(e: &hyper_util::client::legacy::Error) -> Status {
    let mut cause = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(inner) = cur {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            cause = describe_io(io);
            break;
        }
        let text = inner.to_string();
        if !text.is_empty() {
            cause = text;
        }
        cur = inner.source();
    }
    Status::unavailable(cause)
}

/// Export requests of one exporter in flight at once, at most (8 × 60 KiB). Each waits for its
/// collector's answer; on a busy node (or a collector that answers late) one request at
/// a time caps the export rate at one batch per round trip, and the queue overflows
/// although the collector is idle.
const MAX_IN_FLIGHT: usize = 8;

pub(crate) struct OtlpExporter {
    sender: Arc<Sender>,
    /// Encodes each batch (its scratch space reused); every request's `Bytes` is
    /// shared by its retries.
    encoder: encode::Encoder,
}

/// What every request in flight shares.
struct Sender {
    settings: OtlpSettings,
    transport: Transport,
    queue: Arc<SpanQueue>,
    counters: Arc<OutputCounters>,
    health: std::sync::Mutex<Health>,
}

/// What became of one request.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    /// Delivered (possibly partly rejected) or dropped after a permanent error.
    Done,
    /// The shutdown deadline passed: give up on everything left.
    DeadlinePassed,
}

impl OtlpExporter {
    pub(crate) fn new(
        settings: OtlpSettings,
        queue: Arc<SpanQueue>,
        counters: Arc<OutputCounters>,
    ) -> anyhow::Result<Self> {
        let transport = Transport::new(&settings)?;
        let health = Health::new(settings.endpoint.clone(), settings.protocol, queue.capacity());
        Ok(Self {
            sender: Arc::new(Sender { transport, settings, queue, counters, health: std::sync::Mutex::new(health) }),
            encoder: encode::Encoder::default(),
        })
    }

    pub(crate) async fn run(mut self) {
        let sender = self.sender.clone();
        let (size, timeout) = (sender.settings.batch_size, sender.settings.batch_timeout);
        let mut sending: tokio::task::JoinSet<Sent> = tokio::task::JoinSet::new();
        let mut stopping = false;
        let mut parts = Vec::new();
        while let Some(batch) = sender.queue.next_batch(size, timeout).await {
            parts.clear();
            self.encoder.encode_parts(&batch, sender.settings.max_request_bytes, &mut parts);
            for (n, req) in parts.drain(..) {
                while !stopping && sending.len() >= MAX_IN_FLIGHT {
                    stopping |= matches!(sending.join_next().await, Some(Ok(Sent::DeadlinePassed)));
                }
                if stopping {
                    sender.counters.failed("otlp", n, format_args!("unsent at the shutdown deadline"));
                    continue;
                }
                sender.queue.add_in_flight(n);
                let sender = sender.clone();
                sending.spawn(async move {
                    let sent = sender.send(n, req).await;
                    sender.queue.sub_in_flight(n);
                    sent
                });
            }
            while let Some(done) = sending.try_join_next() {
                stopping |= matches!(done, Ok(Sent::DeadlinePassed));
            }
            if stopping {
                break;
            }
        }
        while let Some(done) = sending.join_next().await {
            stopping |= matches!(done, Ok(Sent::DeadlinePassed));
        }
        if stopping {
            let left = sender.queue.drain_all().len();
            sender.counters.failed("otlp", left, format_args!("queued at the shutdown deadline"));
        }
    }
}

impl Sender {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // Health holds only counters and flags: a panic elsewhere cannot break it.
        self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends one request of `n` spans, retrying retryable failures until it is delivered
    /// or the shutdown deadline passes.
    async fn send(&self, n: usize, req: Bytes) -> Sent {
        let mut backoff = self.settings.backoff_initial;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let call = self.transport.call(req.clone());
            tokio::pin!(call);
            // Until shutdown the call runs to its own request timeout; once the queue is
            // closed it is also bounded by the shutdown deadline.
            let early = match self.queue.deadline() {
                Some(_) => None,
                None => tokio::select! {
                    r = &mut call => Some(r),
                    () = self.queue.wait_closed() => None,
                },
            };
            let result = match (early, self.queue.deadline()) {
                (Some(r), _) => r,
                (None, Some(deadline)) => match tokio::time::timeout_at(deadline, &mut call).await {
                    Ok(r) => r,
                    Err(_) => {
                        self.counters.failed("otlp", n, format_args!("export still pending at the shutdown deadline"));
                        return Sent::DeadlinePassed;
                    }
                },
                (None, None) => call.await, // unreachable: wait_closed implies a deadline
            };
            let status = match result {
                Ok(resp) => {
                    let partial = resp.partial_success;
                    let rejected = partial.as_ref().map_or(0, |p| p.rejected_spans.clamp(0, n as i64) as usize);
                    self.counters.exported(n - rejected);
                    if let Some(p) = partial.filter(|p| p.rejected_spans > 0 || !p.error_message.is_empty()) {
                        self.counters.failed(
                            "otlp",
                            rejected,
                            format_args!("rejected by the backend: {}", p.error_message),
                        );
                        if let Some(line) = self.health().on_partial(rejected, &p.error_message) {
                            log::warn!("{line}");
                        }
                    }
                    if let Some(line) = self.health().on_success(self.queue.dropped()) {
                        log::info!("{line}");
                    }
                    return Sent::Done;
                }
                Err(status) => status,
            };
            self.counters.error();
            if !is_retryable(status.code()) && !is_transport_failure(&status) {
                self.counters.failed(
                    "otlp",
                    n,
                    format_args!("permanent error {:?}: {}", status.code(), status.message()),
                );
                match self.health().on_permanent(&status, n) {
                    Some(line) => log::warn!("{line}"),
                    None => log::debug!("otlp: dropped {n} spans: {:?}: {}", status.code(), status.message()),
                }
                return Sent::Done;
            }
            match self.health().on_retryable(&status, self.queue.dropped()) {
                Some(line) => log::warn!("{line}"),
                None => log::debug!(
                    "otlp: export attempt {attempt} of {n} spans failed ({:?}: {}); retrying in ~{backoff:?}",
                    status.code(),
                    describe(&status)
                ),
            }

            let wait = jitter(backoff);
            backoff = (backoff * 2).min(self.settings.backoff_max);
            match self.queue.deadline() {
                Some(deadline) => {
                    if Instant::now() + wait >= deadline {
                        self.counters.failed(
                            "otlp",
                            n,
                            format_args!("endpoint still failing at the shutdown deadline"),
                        );
                        return Sent::DeadlinePassed;
                    }
                    tokio::time::sleep(wait).await;
                }
                None => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        // Shutting down: try once more right away instead of sleeping.
                        () = self.queue.wait_closed() => {}
                    }
                }
            }
        }
    }
}

/// Codes the OTLP specification lists as retryable.
fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// A failure of the connection rather than an answer of the collector: tonic reports a
/// connection reset or a broken pipe mid-request (the collector died while reading the
/// request) as `Unknown` with the I/O or HTTP/2 error as its source. A collector's own
/// status carries no source. Such a request is retried like `Unavailable`: dropping it
/// would lose a batch the collector never saw.
fn is_transport_failure(status: &tonic::Status) -> bool {
    status.code() == Code::Unknown && status.source().is_some()
}

/// `d` scaled by a random factor in [0.5, 1.0].
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// The most specific cause of a failed call, in words ("connection refused").
fn describe(status: &tonic::Status) -> String {
    let mut cause: Option<String> = None;
    let mut cur = status.source();
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return describe_io(io);
        }
        let text = e.to_string();
        if !text.is_empty() {
            cause = Some(text);
        }
        cur = e.source();
    }
    let msg = cause.unwrap_or_else(|| status.message().to_owned());
    if msg.contains("dns error") {
        format!("DNS lookup failed: {msg}")
    } else if msg.is_empty() {
        format!("{:?}", status.code())
    } else {
        msg
    }
}

/// An I/O failure in words ("connection refused").
fn describe_io(io: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match io.kind() {
        K::ConnectionRefused => "connection refused".to_owned(),
        K::TimedOut => "connection timed out".to_owned(),
        K::ConnectionReset => "connection reset".to_owned(),
        K::ConnectionAborted => "connection aborted".to_owned(),
        K::AddrNotAvailable => "address not available".to_owned(),
        _ => io.to_string(),
    }
}

/// Decides which outcomes are worth a log line: one warning per outage, one info line on
/// recovery, one warning per kind of permanent error.
#[derive(Debug)]
struct Health {
    endpoint: String,
    protocol: Protocol,
    capacity: usize,
    /// Set while the endpoint fails: when it started and the queue's drop count then.
    outage: Option<(Instant, u64)>,
    permanent_warned: Vec<Code>,
    partial_warned: bool,
}

const FIX_ENDPOINT: &str = "check --otlp-endpoint / OTEL_EXPORTER_OTLP_ENDPOINT and that the collector is running";

impl Health {
    fn new(endpoint: String, protocol: Protocol, capacity: usize) -> Self {
        Self { endpoint, protocol, capacity, outage: None, permanent_warned: Vec::new(), partial_warned: false }
    }

    /// A retryable failure. Returns the warning for the first one of an outage.
    fn on_retryable(&mut self, status: &tonic::Status, dropped_so_far: u64) -> Option<String> {
        if self.outage.is_some() {
            return None;
        }
        self.outage = Some((Instant::now(), dropped_so_far));
        let (ep, cap) = (&self.endpoint, self.capacity);
        let queued = format!("spans are queued (up to {cap}) and retried");
        Some(match status.code() {
            Code::Unavailable => {
                format!("OTLP endpoint {ep} unreachable ({}); {queued} — {FIX_ENDPOINT}", describe(status))
            }
            Code::DeadlineExceeded | Code::Cancelled => format!(
                "OTLP endpoint {ep} is not answering in time ({}); {queued} — check that the collector is \
                 healthy and not overloaded",
                describe(status)
            ),
            code => format!(
                "OTLP endpoint {ep} is refusing spans ({code:?}: {}); {queued} — the collector may be \
                 overloaded or restarting",
                describe(status)
            ),
        })
    }

    /// A successful export. Returns the recovery line when an outage ends.
    fn on_success(&mut self, dropped_so_far: u64) -> Option<String> {
        let (since, dropped_before) = self.outage.take()?;
        let lost = dropped_so_far.saturating_sub(dropped_before);
        let mut line = format!(
            "OTLP endpoint {} is accepting spans again (after {:.1} s)",
            self.endpoint,
            since.elapsed().as_secs_f64()
        );
        if lost > 0 {
            line.push_str(&format!("; {lost} spans were dropped from the full queue meanwhile"));
        }
        Some(line)
    }

    /// A permanent error: warns once per status code.
    fn on_permanent(&mut self, status: &tonic::Status, n: usize) -> Option<String> {
        let code = status.code();
        if self.permanent_warned.contains(&code) {
            return None;
        }
        self.permanent_warned.push(code);
        let ep = &self.endpoint;
        let hint = match (code, self.protocol) {
            (Code::Unimplemented | Code::Unknown | Code::Internal, Protocol::Grpc) => format!(
                " — is {ep} an OTLP/gRPC endpoint? (the collector's gRPC port is usually 4317; 4318 is OTLP/HTTP: \
                 use --otlp-protocol http/protobuf there)"
            ),
            (Code::Unimplemented | Code::InvalidArgument, Protocol::HttpProtobuf) => format!(
                " — is {ep} an OTLP/HTTP traces URL? (usually http://collector:4318/v1/traces; 4317 is OTLP/gRPC: \
                 use --otlp-protocol grpc there)"
            ),
            (Code::Unauthenticated | Code::PermissionDenied, _) => " — the collector wants credentials: set \
                 --otlp-header 'authorization=Bearer …' (or OTEL_EXPORTER_OTLP_HEADERS)"
                .to_owned(),
            _ => String::new(),
        };
        Some(format!(
            "OTLP endpoint {ep} rejected {n} spans ({code:?}: {}); not retryable, dropped{hint}",
            describe(status)
        ))
    }

    /// A partial success: warns once.
    fn on_partial(&mut self, rejected: usize, message: &str) -> Option<String> {
        if std::mem::replace(&mut self.partial_warned, true) {
            return None;
        }
        Some(format!(
            "OTLP endpoint {} rejected {rejected} spans of a batch: {message} (further rejections are counted as \
             drop.export_failed)",
            self.endpoint
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::tests::{mk_span, resource};
    use crate::export::{ExportConfig, Exporters};
    use crate::span::SpanKind;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest};
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use tokio::task::JoinHandle;
    use tonic::transport::server::TcpIncoming;
    use tonic::{Request, Response};

    #[derive(Clone, Copy)]
    enum Reply {
        Ok,
        Partial(i64),
        Fail(Code),
        /// Answers OK after this long.
        Late(Duration),
    }

    #[derive(Clone)]
    struct Collector {
        received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
        reply: Reply,
        /// Requests being answered now, and the most at once.
        open: Arc<std::sync::atomic::AtomicUsize>,
        most_open: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            req: Request<ExportTraceServiceRequest>,
        ) -> Result<Response<ExportTraceServiceResponse>, Status> {
            use std::sync::atomic::Ordering::SeqCst;
            self.received.lock().unwrap().push(req.into_inner());
            match self.reply {
                Reply::Ok => Ok(Response::new(ExportTraceServiceResponse { partial_success: None })),
                Reply::Late(d) => {
                    let now = self.open.fetch_add(1, SeqCst) + 1;
                    self.most_open.fetch_max(now, SeqCst);
                    tokio::time::sleep(d).await;
                    self.open.fetch_sub(1, SeqCst);
                    Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
                }
                Reply::Partial(n) => Ok(Response::new(ExportTraceServiceResponse {
                    partial_success: Some(ExportTracePartialSuccess {
                        rejected_spans: n,
                        error_message: "too old".into(),
                    }),
                })),
                Reply::Fail(code) => Err(Status::new(code, "nope")),
            }
        }
    }

    impl Collector {
        fn spans(&self) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
            let got = self.received.lock().unwrap();
            got.iter()
                .flat_map(|r| &r.resource_spans)
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| ss.spans.clone())
                .collect()
        }
        fn requests(&self) -> usize {
            self.received.lock().unwrap().len()
        }
    }

    struct Server {
        addr: SocketAddr,
        collector: Collector,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: JoinHandle<()>,
    }

    impl Server {
        async fn stop(mut self) {
            if let Some(tx) = self.stop.take() {
                let _ = tx.send(());
            }
            let _ = self.task.await;
        }
    }

    fn serve(addr: SocketAddr, reply: Reply) -> Server {
        let incoming = TcpIncoming::bind(addr).expect("bind test collector");
        let addr = incoming.local_addr().unwrap();
        let collector = Collector { received: Arc::default(), reply, open: Arc::default(), most_open: Arc::default() };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let svc = TraceServiceServer::new(collector.clone());
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(svc, incoming, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Server { addr, collector, stop: Some(tx), task }
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn fast_settings(addr: SocketAddr, batch_size: usize) -> OtlpSettings {
        let opts = OtlpOptions::grpc(&format!("http://{addr}"));
        let mut s = OtlpSettings::new(&opts, batch_size, Duration::from_millis(20)).unwrap();
        s.backoff_initial = Duration::from_millis(20);
        s.backoff_max = Duration::from_millis(100);
        s
    }

    #[tokio::test]
    async fn exports_to_a_real_collector() {
        let server = serve("127.0.0.1:0".parse().unwrap(), Reply::Ok);
        let cfg = ExportConfig {
            otlp: Some(OtlpOptions::grpc(&server.addr.to_string())), // no scheme: http:// assumed
            batch_timeout: Duration::from_millis(50),
            ..Default::default()
        };
        let ex = Exporters::start(cfg).unwrap();
        let api = resource(10, "api");
        let db = resource(11, "db");
        let spans = [
            mk_span(&api, 7, 1, 0, SpanKind::Server, "GET", 0, 100),
            mk_span(&api, 7, 2, 1, SpanKind::Client, "GET", 10, 50),
            mk_span(&db, 7, 3, 2, SpanKind::Server, "POST", 20, 30),
        ];
        for s in &spans {
            ex.submit((**s).clone());
        }
        let counters = ex.counters("otlp").unwrap();
        ex.shutdown(Duration::from_secs(5)).await;
        assert_eq!(counters.get(), (3, 0, 0));

        let got = server.collector.spans();
        let ids: Vec<_> = got.iter().map(|s| (s.span_id.clone(), s.parent_span_id.clone(), s.kind)).collect();
        assert_eq!(ids, [(vec![1; 8], vec![], 2), (vec![2; 8], vec![1; 8], 3), (vec![3; 8], vec![2; 8], 2)]);
        assert!(got.iter().all(|s| s.trace_id == vec![7; 16]));
        let resources = server.collector.received.lock().unwrap()[0].resource_spans.len();
        assert_eq!(resources, 2, "one ResourceSpans per process");
        server.stop().await;
    }

    #[tokio::test]
    async fn several_requests_in_flight_to_a_slow_collector() {
        let server = serve("127.0.0.1:0".parse().unwrap(), Reply::Late(Duration::from_millis(300)));
        let queue = Arc::new(SpanQueue::new("otlp", 1000));
        let counters = Arc::new(OutputCounters::default());
        let ex = OtlpExporter::new(fast_settings(server.addr, 10), queue.clone(), counters.clone()).unwrap();
        let task = tokio::spawn(ex.run());
        let r = resource(1, "svc");
        for i in 0..100u8 {
            queue.push(mk_span(&r, 9, i, 0, SpanKind::Server, "s", 0, 1));
        }
        wait_for("every span delivered", || counters.get().0 == 100).await;
        let most = server.collector.most_open.load(std::sync::atomic::Ordering::SeqCst);
        // One request at a time would take 10 × 300 ms; with MAX_IN_FLIGHT they overlap.
        assert_eq!(most, MAX_IN_FLIGHT, "requests in flight at once");
        assert_eq!(server.collector.spans().len(), 100);
        queue.close(Instant::now() + Duration::from_secs(1));
        task.await.unwrap();
        server.stop().await;
    }

    #[tokio::test]
    async fn queues_while_down_then_delivers() {
        // A port with nothing listening (bound then released).
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let queue = Arc::new(SpanQueue::new("otlp", 10));
        let counters = Arc::new(OutputCounters::default());
        let ex = OtlpExporter::new(fast_settings(addr, 5), queue.clone(), counters.clone()).unwrap();
        let task = tokio::spawn(ex.run());

        let r = resource(1, "svc");
        let span = |i: u8| mk_span(&r, 9, i, 0, SpanKind::Server, &format!("s{i}"), u64::from(i), 1);
        for i in 0..5 {
            queue.push(span(i));
        }
        // The exporter takes the first batch and keeps retrying it.
        wait_for("first batch in flight", || queue.in_flight() == 5).await;
        wait_for("a few failed attempts", || counters.get().2 >= 3).await;
        for i in 5..35 {
            queue.push(span(i));
        }
        assert_eq!(queue.len(), 10, "the queue stays bounded");
        assert_eq!(queue.dropped(), 20, "oldest spans dropped and counted");
        assert_eq!(counters.get().0, 0);

        let server = serve(addr, Reply::Ok);
        wait_for("delivery after the collector starts", || server.collector.spans().len() == 15).await;
        // Requests run concurrently, so their order of arrival is not fixed.
        let mut names: Vec<String> = server.collector.spans().into_iter().map(|s| s.name).collect();
        names.sort_by_key(|n| n[1..].parse::<u32>().unwrap_or(u32::MAX));
        let want: Vec<String> = (0..5).chain(25..35).map(|i| format!("s{i}")).collect();
        assert_eq!(names, want);
        wait_for("exported count", || counters.get().0 == 15).await;
        assert_eq!(counters.get().1, 0, "nothing failed permanently");

        queue.close(Instant::now() + Duration::from_secs(1));
        task.await.unwrap();
        server.stop().await;
    }

    #[tokio::test]
    async fn permanent_error_drops_the_batch_without_retry() {
        let server = serve("127.0.0.1:0".parse().unwrap(), Reply::Fail(Code::InvalidArgument));
        let queue = Arc::new(SpanQueue::new("otlp", 100));
        let counters = Arc::new(OutputCounters::default());
        let ex = OtlpExporter::new(fast_settings(server.addr, 4), queue.clone(), counters.clone()).unwrap();
        let task = tokio::spawn(ex.run());
        let r = resource(1, "svc");
        for i in 0..4 {
            queue.push(mk_span(&r, 9, i, 0, SpanKind::Server, "s", 0, 1));
        }
        wait_for("the batch to be dropped", || counters.get().1 == 4).await;
        queue.close(Instant::now() + Duration::from_secs(1));
        task.await.unwrap();
        assert_eq!(server.collector.requests(), 1, "not retried");
        assert_eq!(counters.get(), (0, 4, 1));
        server.stop().await;
    }

    #[tokio::test]
    async fn partial_success_counts_rejected_spans() {
        let server = serve("127.0.0.1:0".parse().unwrap(), Reply::Partial(2));
        let queue = Arc::new(SpanQueue::new("otlp", 100));
        let counters = Arc::new(OutputCounters::default());
        let ex = OtlpExporter::new(fast_settings(server.addr, 5), queue.clone(), counters.clone()).unwrap();
        let task = tokio::spawn(ex.run());
        let r = resource(1, "svc");
        for i in 0..5 {
            queue.push(mk_span(&r, 9, i, 0, SpanKind::Server, "s", 0, 1));
        }
        queue.close(Instant::now() + Duration::from_secs(5));
        task.await.unwrap();
        assert_eq!(counters.get(), (3, 2, 0));
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_with_dead_endpoint_counts_unsent() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let queue = Arc::new(SpanQueue::new("otlp", 100));
        let counters = Arc::new(OutputCounters::default());
        let ex = OtlpExporter::new(fast_settings(addr, 5), queue.clone(), counters.clone()).unwrap();
        let task = tokio::spawn(ex.run());
        let r = resource(1, "svc");
        for i in 0..12 {
            queue.push(mk_span(&r, 9, i, 0, SpanKind::Server, "s", 0, 1));
        }
        let t0 = Instant::now();
        queue.close(t0 + Duration::from_millis(300));
        task.await.unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2), "bounded by the deadline");
        assert_eq!(counters.get().0, 0);
        assert_eq!(counters.get().1, 12, "every unsent span counted");
        assert!(queue.is_empty());
    }

    #[test]
    fn health_logs_once_per_outage() {
        let mut h = Health::new("http://x:4317".into(), Protocol::Grpc, 8192);
        let down = tonic::Status::unavailable("tcp connect error");
        let first = h.on_retryable(&down, 0).unwrap();
        assert!(first.starts_with("OTLP endpoint http://x:4317 unreachable (tcp connect error); spans are queued (up to 8192) and retried"), "{first}");
        assert!(first.contains("--otlp-endpoint / OTEL_EXPORTER_OTLP_ENDPOINT"));
        assert!(h.on_retryable(&down, 5).is_none());
        assert!(h.on_retryable(&tonic::Status::deadline_exceeded("slow"), 5).is_none());
        let back = h.on_success(7).unwrap();
        assert!(back.contains("accepting spans again") && back.contains("7 spans were dropped"), "{back}");
        assert!(h.on_success(7).is_none());
        // A new outage warns again.
        assert!(h.on_retryable(&down, 7).is_some());

        let bad = tonic::Status::unimplemented("unknown service");
        assert!(h.on_permanent(&bad, 3).unwrap().contains("4317"));
        assert!(h.on_permanent(&bad, 3).is_none());
        assert!(h.on_permanent(&tonic::Status::invalid_argument("x"), 3).is_some());
        assert!(h.on_partial(1, "m").is_some());
        assert!(h.on_partial(1, "m").is_none());
    }

    #[tokio::test]
    async fn describes_connection_refused() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let ep = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
        let err = TraceServiceClient::new(ep).export(ExportTraceServiceRequest::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(describe(&err), "connection refused");
    }

    #[test]
    fn a_broken_connection_is_retried_a_collectors_unknown_is_not() {
        let broken = tonic::Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe)));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(is_transport_failure(&broken));
        assert!(!is_transport_failure(&tonic::Status::new(Code::Unknown, "the collector's own error")));
        assert!(!is_transport_failure(&tonic::Status::new(Code::InvalidArgument, "bad request")));
    }

    #[test]
    fn retryable_codes() {
        for c in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::Cancelled,
            Code::OutOfRange,
            Code::DataLoss,
        ] {
            assert!(is_retryable(c), "{c:?}");
        }
        for c in [
            Code::InvalidArgument,
            Code::Unimplemented,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Internal,
            Code::Unknown,
            Code::NotFound,
        ] {
            assert!(!is_retryable(c), "{c:?}");
        }
    }

    #[test]
    fn endpoint_normalization() {
        assert_eq!(normalize_endpoint("127.0.0.1:4317").unwrap(), "http://127.0.0.1:4317");
        assert_eq!(normalize_endpoint(" http://c:4317 ").unwrap(), "http://c:4317");
        assert_eq!(normalize_endpoint("https://c:4317").unwrap(), "https://c:4317");
        assert!(normalize_endpoint("grpc://c:4317").unwrap_err().to_string().contains("unsupported scheme"));
    }

    #[test]
    fn http_answers_map_to_grpc_outcomes() {
        let ok = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess { rejected_spans: 2, error_message: "bad".into() }),
        };
        let answer = http_answer(http::StatusCode::OK, "application/x-protobuf", &ok.encode_to_vec()).unwrap();
        assert_eq!(answer, ok);
        assert_eq!(http_answer(http::StatusCode::OK, "", b"").unwrap(), ExportTraceServiceResponse::default());
        assert_eq!(
            http_answer(http::StatusCode::OK, "", b"\xff\xff").unwrap_err().code(),
            Code::Internal,
            "a 200 that is not OTLP"
        );
        let status = RpcStatus { code: 3, message: "no spans".into() }.encode_to_vec();
        let e = http_answer(http::StatusCode::BAD_REQUEST, "application/x-protobuf", &status).unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "HTTP 400 Bad Request: no spans"));
        let e = http_answer(http::StatusCode::NOT_FOUND, "text/plain", b"404 page\n not found").unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Unimplemented, "HTTP 404 Not Found: 404 page not found"));
        for (status, code, retried) in [
            (401, Code::Unauthenticated, false),
            (403, Code::PermissionDenied, false),
            (413, Code::InvalidArgument, false),
            (429, Code::ResourceExhausted, true),
            (500, Code::Internal, false),
            (502, Code::Unavailable, true),
            (503, Code::Unavailable, true),
            (504, Code::Unavailable, true),
        ] {
            let e = http_answer(http::StatusCode::from_u16(status).unwrap(), "", b"").unwrap_err();
            assert_eq!((e.code(), is_retryable(e.code())), (code, retried), "{status}");
        }
    }

    #[test]
    fn gzip_bodies_decompress_to_the_request() {
        let body = b"spans spans spans spans spans".repeat(50);
        let packed = gzip(&body);
        assert!(packed.len() < body.len() / 4, "{} bytes", packed.len());
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&packed[..]), &mut out).unwrap();
        assert_eq!(out, body);
    }

    #[tokio::test]
    async fn a_missing_or_empty_ca_file_is_one_line() {
        let dir = std::env::temp_dir().join(format!("ghostwire-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            for (path, words) in [(dir.join("missing.pem"), "cannot read"), (empty.clone(), "holds no PEM certificate")]
            {
                let opts = OtlpOptions {
                    protocol,
                    certificate: Some(path.clone()),
                    ..OtlpOptions::grpc("https://127.0.0.1:1/v1/traces")
                };
                let settings = OtlpSettings::new(&opts, 10, Duration::from_millis(10)).unwrap();
                let e = format!("{:#}", Transport::new(&settings).err().expect("refused"));
                assert!(e.contains(&path.display().to_string()) && e.contains(words), "{protocol:?}: {e}");
                assert!(!e.contains('\n'), "{e}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
