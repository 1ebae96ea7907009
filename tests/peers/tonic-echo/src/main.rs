//! tonic-echo: a gRPC peer of grpc-helper's tests that is not grpcio (Rust, tonic + rustls).
//!
//! `tonic-echo server ...` serves EchoService (echo.proto) and grpc.health.v1, optionally registered on a
//! grpc-helper main (RpcServerService/proxy_register, forgotten on SIGTERM/SIGINT); `tonic-echo client ...`
//! makes one EchoService call and prints what came back (status, details, headers, trailers, responses)
//! as one JSON line. See README.md in this folder for the exact behaviours.

#[allow(clippy::all, dead_code, nonstandard_style)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http_body::{Body as HttpBody, Frame};
use pb::echo_service_server::{EchoService, EchoServiceServer};
use pb::rpc_server_service_client::RpcServerServiceClient;
use pb::{EchoRequest, EchoResponse};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codec::CompressionEncoding;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::codegen::{BoxFuture, Bytes, Service};
use tonic::metadata::{KeyAndValueRef, MetadataMap, MetadataValue};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Code, Request, Response, Status, Streaming};

type Error = Box<dyn std::error::Error + Send + Sync>;

const DEFAULT_MAX_MESSAGE: usize = 4 * 1024 * 1024; // gRPC's usual receive limit

// --- output ---

/// One JSON line on stdout, flushed at once (tests read it while the process runs).
fn emit(value: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

// --- arguments ---

/// `--name value` options (repeatable), `--flag`s and positional arguments, parsed by hand.
struct Args {
    options: Vec<(String, String)>,
    flags: Vec<String>,
    positional: Vec<String>,
}

const FLAGS: &[&str] = &["--gzip", "--log-calls"];

impl Args {
    fn parse(raw: &[String]) -> Result<Args, Error> {
        let mut args = Args {
            options: vec![],
            flags: vec![],
            positional: vec![],
        };
        let mut it = raw.iter();
        while let Some(arg) = it.next() {
            if FLAGS.contains(&arg.as_str()) {
                args.flags.push(arg.clone());
            } else if let Some(name) = arg.strip_prefix("--") {
                let value = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
                args.options.push((name.to_string(), value.clone()));
            } else {
                args.positional.push(arg.clone());
            }
        }
        Ok(args)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.options
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, Error> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: not a number: {v}").into()),
        }
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    fn check(&self, allowed: &[&str]) -> Result<(), Error> {
        for (k, _) in &self.options {
            if !allowed.contains(&k.as_str()) {
                return Err(format!("unknown option --{k}").into());
            }
        }
        Ok(())
    }
}

fn read(path: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| format!("{path}: {e}").into())
}

/// The first word of a token file, as grpc-helper reads `rpc-auth-token-file`.
fn read_token(path: Option<&str>) -> Result<Option<String>, Error> {
    match path {
        None => Ok(None),
        Some(p) => {
            let text = String::from_utf8(read(p)?)?;
            let token = text
                .split_whitespace()
                .next()
                .ok_or_else(|| format!("{p}: empty token file"))?;
            Ok(Some(token.to_string()))
        }
    }
}

/// A channel to `target` (HOST:PORT): TLS when `ca` is given (with a client certificate if cert/key are,
/// `server_name` checked instead of the host); connects lazily, so an unreachable target is a call's
/// UNAVAILABLE status.
fn channel(
    target: &str,
    ca: Option<&str>,
    cert: Option<&str>,
    key: Option<&str>,
    server_name: Option<&str>,
) -> Result<Channel, Error> {
    let scheme = if ca.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{target}"))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(ca) = ca {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        match (cert, key) {
            (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => return Err("a client certificate needs both its cert and key".into()),
        }
        if let Some(name) = server_name {
            tls = tls.domain_name(name);
        }
        endpoint = endpoint.tls_config(tls)?;
    } else if cert.is_some() || key.is_some() || server_name.is_some() {
        return Err("TLS options need the CA (--tls-ca / --main-tls-ca)".into());
    }
    Ok(endpoint.connect_lazy())
}

fn with_token<T>(mut request: Request<T>, token: &Option<String>) -> Request<T> {
    if let Some(t) = token
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        request.metadata_mut().insert("authorization", v);
    }
    request
}

// --- the echo service ---

/// google.rpc.Status, what `grpc-status-details-bin` carries (details left empty).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// What a request's text asks for.
enum Control {
    Normal,
    Fail(Status),
    Sleep(u64),
    Big(usize),
}

fn control(text: &str) -> Control {
    if let Some(rest) = text.strip_prefix("status:") {
        let (code, message) = rest.split_once(':').unwrap_or((rest, ""));
        let code = Code::from_i32(code.parse().unwrap_or(2));
        let details = prost::Message::encode_to_vec(&RpcStatus {
            code: code as i32,
            message: message.to_string(),
        });
        return Control::Fail(Status::with_details(code, message, Bytes::from(details)));
    }
    if let Some(ms) = text.strip_prefix("sleep:").and_then(|v| v.parse().ok()) {
        return Control::Sleep(ms);
    }
    if let Some(n) = text.strip_prefix("big:").and_then(|v| v.parse().ok()) {
        return Control::Big(n);
    }
    Control::Normal
}

/// Applies a request's control before answering: Err for `status:`, sleeps for `sleep:`, and the payload
/// to answer (`big:N`: N bytes, else the request's).
async fn apply(text: &str, payload: &[u8]) -> Result<Vec<u8>, Status> {
    match control(text) {
        Control::Fail(status) => Err(status),
        Control::Sleep(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(payload.to_vec())
        }
        Control::Big(n) => Ok(vec![b'x'; n]),
        Control::Normal => Ok(payload.to_vec()),
    }
}

/// Prints `{"event":"cancelled","method":M}` when dropped before `done()`: the handler's future (or its
/// response task) was dropped, i.e. the call was cancelled.
struct CancelGuard {
    method: &'static str,
    armed: bool,
}

impl CancelGuard {
    fn new(method: &'static str) -> Self {
        CancelGuard {
            method,
            armed: true,
        }
    }
    fn done(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            emit(json!({"event": "cancelled", "method": self.method}));
        }
    }
}

/// `collect`'s input: prints `{"event":"collect_end","count":N,"how":...}` once, when its input ended
/// ("eof"), failed ("error", with the status code), or the handler was dropped while reading ("cancelled").
struct CollectInput {
    count: u32,
    reported: bool,
}

impl CollectInput {
    fn report(&mut self, how: &str, code: Option<i32>) {
        if !self.reported {
            self.reported = true;
            let mut event = json!({"event": "collect_end", "count": self.count, "how": how});
            if let Some(c) = code {
                event["code"] = json!(c);
            }
            emit(event);
        }
    }
}

impl Drop for CollectInput {
    fn drop(&mut self) {
        self.report("cancelled", None);
    }
}

fn response(text: String, payload: Vec<u8>, index: u32) -> EchoResponse {
    EchoResponse {
        r: None,
        text,
        payload,
        index,
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

/// `log_calls`: print `{"event":"call","method":M}` as each call starts (to tell replicas' shares apart).
struct Echo {
    log_calls: bool,
}

impl Echo {
    fn called(&self, method: &str) {
        if self.log_calls {
            emit(json!({"event": "call", "method": method}));
        }
    }
}

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.called("echo");
        let mut guard = CancelGuard::new("echo");
        let req = request.into_inner();
        let result = apply(&req.text, &req.payload).await;
        guard.done();
        Ok(Response::new(response(req.text, result?, 0)))
    }

    type repeatStream = ResponseStream;

    async fn repeat(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<ResponseStream>, Status> {
        self.called("repeat");
        let mut guard = CancelGuard::new("repeat");
        let req = request.into_inner();
        let result = apply(&req.text, &req.payload).await;
        guard.done();
        let payload = result?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut guard = CancelGuard::new("repeat");
            for i in 0..req.count {
                if tx
                    .send(Ok(response(req.text.clone(), payload.clone(), i)))
                    .await
                    .is_err()
                {
                    return; // the call went away: the guard reports it
                }
            }
            guard.done();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn collect(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoResponse>, Status> {
        self.called("collect");
        let mut guard = CancelGuard::new("collect");
        let mut input = CollectInput {
            count: 0,
            reported: false,
        };
        let end = request.extensions().get::<InputEnd>().cloned();
        let mut stream = request.into_inner();
        let (mut text, mut payload, mut first) = (String::new(), Vec::new(), None);
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    input.count += 1;
                    text.push_str(&m.text);
                    payload.extend_from_slice(&m.payload);
                    first.get_or_insert(m.text);
                }
                Ok(None) => {
                    if let Some((code, message)) = InputEnd::error(&end) {
                        // tonic said "end of stream", HTTP/2 said the input failed (e.g. RST_STREAM CANCEL)
                        input.report("error", Some(code));
                        guard.done();
                        return Err(Status::new(Code::from_i32(code), message));
                    }
                    input.report("eof", None);
                    break;
                }
                Err(status) => {
                    input.report("error", Some(status.code() as i32));
                    guard.done();
                    return Err(status);
                }
            }
        }
        // The first message's control applies once the input ended
        let result = apply(first.as_deref().unwrap_or(""), &payload).await;
        guard.done();
        Ok(Response::new(response(text, result?, input.count)))
    }

    type chatStream = ResponseStream;

    async fn chat(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        self.called("chat");
        let end = request.extensions().get::<InputEnd>().cloned();
        let mut stream = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut guard = CancelGuard::new("chat");
            let mut index = 0;
            loop {
                let next = tokio::select! {
                    next = stream.message() => next,
                    _ = tx.closed() => return,
                };
                match next {
                    Ok(Some(m)) => {
                        let answer = tokio::select! {
                            answer = apply(&m.text, &m.payload) => answer,
                            _ = tx.closed() => return,
                        };
                        let item = answer.map(|payload| response(m.text, payload, index));
                        let failed = item.is_err();
                        if tx.send(item).await.is_err() {
                            return;
                        }
                        if failed {
                            break;
                        }
                        index += 1;
                    }
                    Ok(None) => match InputEnd::error(&end) {
                        Some(_) => return, // the input failed (cancelled): the guard reports it
                        None => break,
                    },
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                }
            }
            guard.done();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

// --- metadata on every EchoService response ---

/// Adds the peer's initial metadata (`x-peer-header`, `x-peer-header-bin`) and trailing metadata
/// (`x-peer-trailer`, `x-peer-trailer-bin`) to every EchoService response, failed ones included. A
/// trailers-only response (tonic's way to fail before any message) is sent as headers, then trailers, so
/// that a failed call has initial metadata too.
#[derive(Clone)]
struct PeerMetadata<S> {
    inner: S,
}

/// `name: text` and `name-bin: bytes`, encoded by tonic's metadata API, added to `headers`.
fn add_metadata(
    headers: &mut HeaderMap,
    name: &'static str,
    text: &'static str,
    bytes: &'static [u8],
) {
    let mut map = MetadataMap::new();
    map.insert(name, MetadataValue::from_static(text));
    let bin = format!("{name}-bin");
    if let Ok(key) = tonic::metadata::BinaryMetadataKey::from_bytes(bin.as_bytes()) {
        map.insert_bin(key, MetadataValue::from_bytes(bytes));
    }
    for (key, value) in map.into_headers().iter() {
        headers.insert(key.clone(), value.clone());
    }
}

fn peer_headers(headers: &mut HeaderMap) {
    add_metadata(headers, "x-peer-header", "h1", &[0x01, 0x02, 0xff]);
}

fn peer_trailers(trailers: &mut HeaderMap) {
    add_metadata(trailers, "x-peer-trailer", "t1", &[0xfe, 0x00]);
}

impl<S> Service<http::Request<tonic::body::Body>> for PeerMetadata<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<PeerBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let echo = request.uri().path().starts_with("/EchoService/");
        if echo {
            let end = InputEnd::default();
            request.extensions_mut().insert(end.clone());
            request = request.map(|inner| tonic::body::Body::new(RecordingBody { inner, end }));
        }
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            if !echo {
                return Ok(response.map(|body| PeerBody {
                    inner: Some(body),
                    trailers: None,
                    add: false,
                }));
            }
            let (mut parts, body) = response.into_parts();
            let mut trailers = None;
            if parts.headers.contains_key("grpc-status") {
                // trailers-only: keep the content type as headers, the rest goes to the trailers
                let mut moved = HeaderMap::new();
                for (name, value) in parts.headers.iter() {
                    if name != http::header::CONTENT_TYPE {
                        moved.append(name.clone(), value.clone());
                    }
                }
                parts
                    .headers
                    .keep_only(|name, _| name == http::header::CONTENT_TYPE);
                peer_trailers(&mut moved);
                trailers = Some(moved);
            }
            peer_headers(&mut parts.headers);
            let inner = if trailers.is_some() { None } else { Some(body) };
            Ok(http::Response::from_parts(
                parts,
                PeerBody {
                    inner,
                    trailers,
                    add: true,
                },
            ))
        })
    }
}

trait HeaderMapKeepOnly {
    fn keep_only(&mut self, keep: impl Fn(&http::HeaderName, &HeaderValue) -> bool);
}

impl HeaderMapKeepOnly for HeaderMap {
    fn keep_only(&mut self, keep: impl Fn(&http::HeaderName, &HeaderValue) -> bool) {
        let kept: Vec<_> = self
            .iter()
            .filter(|(n, v)| keep(n, v))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        self.clear();
        for (n, v) in kept {
            self.append(n, v);
        }
    }
}

/// How a request body ended, as HTTP/2 said it: `Some(error)` when it failed (a RST_STREAM from the client,
/// a broken connection). tonic's server-side decoder turns a CANCELLED request body into a clean end of the
/// stream (`Ok(None)`, tonic 0.14 codec/decode.rs), so the handlers look here to tell a cancelled input
/// from a finished one.
#[derive(Clone, Default)]
struct InputEnd(Arc<Mutex<Option<Status>>>);

impl InputEnd {
    fn error(request_end: &Option<InputEnd>) -> Option<(i32, String)> {
        let end = request_end.as_ref()?.0.lock().unwrap();
        end.as_ref()
            .map(|s| (s.code() as i32, s.message().to_string()))
    }
}

struct RecordingBody {
    inner: tonic::body::Body,
    end: InputEnd,
}

impl HttpBody for RecordingBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(status))) = &polled {
            let copy = Status::new(status.code(), status.message());
            self.end.0.lock().unwrap().get_or_insert(copy);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body with the peer's trailers added (`add`), or only trailers (a former trailers-only response).
struct PeerBody {
    inner: Option<tonic::body::Body>,
    trailers: Option<HeaderMap>,
    add: bool,
}

impl HttpBody for PeerBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(inner) = this.inner.as_mut() {
            return match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if this.add && frame.is_trailers() => {
                    let mut trailers = frame.into_trailers().unwrap_or_default();
                    peer_trailers(&mut trailers);
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                other => other,
            };
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => self.trailers.is_none(),
        }
    }
}

// --- server ---

const SERVER_OPTIONS: &[&str] = &[
    "port",
    "bind",
    "register",
    "name",
    "version",
    "host",
    "tls-cert",
    "tls-key",
    "tls-ca",
    "main-tls-ca",
    "main-cert",
    "main-key",
    "main-server-name",
    "token-file",
    "max-message-bytes",
    "register-timeout-ms",
];

async fn server(args: Args) -> Result<(), Error> {
    args.check(SERVER_OPTIONS)?;
    let port: u16 = args.num("port", 0)?;
    let bind = args.get("bind").unwrap_or("127.0.0.1");
    let addr: SocketAddr = format!("{bind}:{port}")
        .parse()
        .or_else(|_| format!("[{bind}]:{port}").parse())?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let port = listener.local_addr()?.port();

    let mut builder = Server::builder();
    if let (Some(cert), Some(key)) = (args.get("tls-cert"), args.get("tls-key")) {
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = args.get("tls-ca") {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca)?)); // client certificates required
        }
        builder = builder.tls_config(tls)?;
    } else if args.get("tls-cert").is_some()
        || args.get("tls-key").is_some()
        || args.get("tls-ca").is_some()
    {
        return Err("--tls-cert and --tls-key go together (--tls-ca needs them)".into());
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health
        .set_service_status("EchoService", tonic_health::ServingStatus::Serving)
        .await;

    let max = args.num("max-message-bytes", DEFAULT_MAX_MESSAGE)?;
    let mut echo = EchoServiceServer::new(Echo {
        log_calls: args.flag("--log-calls"),
    })
    .max_decoding_message_size(max);
    if args.flag("--gzip") {
        echo = echo
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = builder
        .layer(tower_layer::layer_fn(|inner| PeerMetadata { inner }))
        .add_service(health_service)
        .add_service(echo);
    let serving = tokio::spawn(router.serve_with_incoming_shutdown(
        TcpListenerStream::new(listener),
        async {
            let _ = stop_rx.await;
        },
    ));
    emit(json!({"listening": port}));

    let registration = match args.get("register") {
        None => None,
        Some(main) => {
            let name = args.get("name").unwrap_or("echo").to_string();
            let host = args.get("host").unwrap_or("").to_string();
            let version = args.get("version").unwrap_or("tonic-echo:1").to_string();
            let main_channel = channel(
                main,
                args.get("main-tls-ca"),
                args.get("main-cert"),
                args.get("main-key"),
                args.get("main-server-name"),
            )?;
            let token = read_token(args.get("token-file"))?;
            let mut client = RpcServerServiceClient::new(main_channel);
            let patience = Duration::from_millis(args.num("register-timeout-ms", 30_000)?);
            register(&mut client, &token, &name, &version, &host, port, patience).await?;
            emit(json!({"registered": true}));
            Some((client, token, name, host))
        }
    };

    wait_for_signal().await?;
    if let Some((mut client, token, name, host)) = registration {
        let filter = pb::Filter {
            names: vec![name],
            ignore_unknown: true,
            endpoint: Some(pb::Endpoint {
                host,
                port: port as u32,
            }),
            ..Default::default()
        };
        let forget = client.proxy_forget(with_token(Request::new(filter), &token));
        match tokio::time::timeout(Duration::from_secs(5), forget).await {
            Ok(Ok(_)) => emit(json!({"event": "forgotten"})),
            Ok(Err(status)) => eprintln!("proxy_forget failed: {status}"),
            Err(_) => eprintln!("proxy_forget: no answer within 5 s"),
        }
    }
    let _ = stop_tx.send(());
    // Graceful end for the calls in progress, bounded
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    Ok(())
}

async fn register(
    client: &mut RpcServerServiceClient<Channel>,
    token: &Option<String>,
    name: &str,
    version: &str,
    host: &str,
    port: u16,
    patience: Duration,
) -> Result<(), Error> {
    let deadline = Instant::now() + patience;
    let mut retrying = false;
    loop {
        let message = pb::ProxyRegisterRequest {
            names: vec![name.to_string()],
            version: version.to_string(),
            host: host.to_string(),
            port: port as u32,
            // Fields main's API gains later (new field numbers only) keep their defaults
            ..Default::default()
        };
        let mut request = with_token(Request::new(message), token);
        request.set_timeout(Duration::from_secs(10));
        match client.proxy_register(request).await {
            Ok(answer) => {
                let r = answer.into_inner().r.unwrap_or_default();
                if r.code != 0 {
                    return Err(format!(
                        "proxy_register refused: result code {}: {}",
                        r.code, r.msg
                    )
                    .into());
                }
                return Ok(());
            }
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                if !retrying {
                    retrying = true;
                    eprintln!(
                        "tonic-echo: proxy_register: main unavailable ({}), retrying",
                        status.message()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => {
                let (code, message) = (status.code(), status.message());
                return Err(format!(
                    "proxy_register failed: {code:?} (code {}): {message}",
                    code as i32
                )
                .into());
            }
        }
    }
}

async fn wait_for_signal() -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

// --- client ---

const CLIENT_OPTIONS: &[&str] = &[
    "target",
    "tls-ca",
    "tls-cert",
    "tls-key",
    "server-name",
    "token-file",
    "metadata",
    "timeout-ms",
    "cancel-after-ms",
    "count",
    "messages",
    "interval-ms",
    "payload-bytes",
    "max-message-bytes",
];

/// What a call got, filled as it goes (a cancelled or timed-out call still shows what came before).
#[derive(Default)]
struct Outcome {
    status: Option<(i32, String, Vec<u8>)>,
    headers: Option<MetadataMap>,
    trailers: Option<MetadataMap>,
    responses: Vec<Value>,
}

fn metadata_json(map: &MetadataMap) -> Value {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in map.iter() {
        let (key, value) = match entry {
            KeyAndValueRef::Ascii(k, v) => (k.to_string(), json!(v.to_str().unwrap_or(""))),
            KeyAndValueRef::Binary(k, v) => (
                k.to_string(),
                json!(B64.encode(v.to_bytes().unwrap_or_default())),
            ),
        };
        out.entry(key).or_default().push(value);
    }
    let object: serde_json::Map<String, Value> = out
        .into_iter()
        .map(|(k, mut v)| {
            (
                k,
                if v.len() == 1 {
                    v.remove(0)
                } else {
                    Value::Array(v)
                },
            )
        })
        .collect();
    Value::Object(object)
}

fn response_json(r: &EchoResponse) -> Value {
    let result = r.r.as_ref().map(|r| json!({"code": r.code, "msg": r.msg}));
    json!({"text": r.text, "payload_len": r.payload.len(), "index": r.index, "r": result})
}

async fn client(args: Args) -> Result<(), Error> {
    args.check(CLIENT_OPTIONS)?;
    let [method, text] = match &args.positional[..] {
        [m, t] => [m.clone(), t.clone()],
        _ => {
            return Err("usage: tonic-echo client --target HOST:PORT [options] METHOD TEXT".into());
        }
    };
    let path = match method.as_str() {
        "echo" | "repeat" | "collect" | "chat" => format!("/EchoService/{method}"),
        _ => return Err(format!("unknown method {method}: echo, repeat, collect or chat").into()),
    };
    let target = args.get("target").ok_or("--target HOST:PORT is required")?;
    let channel = channel(
        target,
        args.get("tls-ca"),
        args.get("tls-cert"),
        args.get("tls-key"),
        args.get("server-name"),
    )?;
    let token = read_token(args.get("token-file"))?;
    let count: u32 = args.num("count", 3)?;
    let messages: u32 = args.num("messages", 1)?;
    let cancel_after: Option<u64> = args.get("cancel-after-ms").map(|v| v.parse()).transpose()?;
    let timeout: Option<u64> = args.get("timeout-ms").map(|v| v.parse()).transpose()?;
    let interval: u64 = args.num("interval-ms", if cancel_after.is_some() { 100 } else { 0 })?;
    let payload = vec![b'p'; args.num("payload-bytes", 0usize)?];
    let streaming_input = matches!(method.as_str(), "collect" | "chat");

    // The requests: one for echo/repeat; for collect/chat, `messages` of them `interval` ms apart and,
    // when the call is to be cancelled, an input that stays open so that the cancellation comes mid-input
    let (tx, rx) = mpsc::channel::<EchoRequest>(16);
    let sent = if streaming_input { messages } else { 1 };
    let request_message = EchoRequest {
        text: text.clone(),
        payload: payload.clone(),
        count,
    };
    tokio::spawn(async move {
        for i in 0..sent {
            if i > 0 && interval > 0 {
                tokio::time::sleep(Duration::from_millis(interval)).await;
            }
            if tx.send(request_message.clone()).await.is_err() {
                return;
            }
        }
        if streaming_input && cancel_after.is_some() {
            tx.closed().await; // hold the input open until the call goes away
        }
    });
    let mut request = with_token(Request::new(ReceiverStream::new(rx)), &token);
    for item in args.all("metadata") {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("--metadata {item}: not key=value"))?;
        if key.ends_with("-bin") {
            let key = tonic::metadata::BinaryMetadataKey::from_bytes(key.as_bytes())?;
            request
                .metadata_mut()
                .append_bin(key, MetadataValue::from_bytes(value.as_bytes()));
        } else {
            let key = tonic::metadata::AsciiMetadataKey::from_bytes(key.as_bytes())?;
            request.metadata_mut().append(key, value.parse()?);
        }
    }
    if let Some(ms) = timeout {
        request.set_timeout(Duration::from_millis(ms)); // grpc-timeout: the deadline the server sees
    }
    let cancel_handle = request.cancellation_handle();

    let max = args.num("max-message-bytes", DEFAULT_MAX_MESSAGE)?;
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(max);
    if args.flag("--gzip") {
        grpc = grpc
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
    }
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let filled = outcome.clone();
    let call = async move {
        // Every kind goes as a stream both ways (the same bytes on the wire as unary ones), so that
        // headers and trailers are told apart
        let fail = |status: &Status| {
            (
                status.code() as i32,
                status.message().to_string(),
                status.details().to_vec(),
            )
        };
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
            .map_err(|s| {
                filled.lock().unwrap().status = Some(fail(&s));
            })?;
        let codec = tonic_prost::ProstCodec::<EchoRequest, EchoResponse>::default();
        let path = http::uri::PathAndQuery::try_from(path).expect("a valid path");
        match grpc.streaming(request, path, codec).await {
            Err(status)
                if status.code() == Code::Cancelled
                    && status.message() == "Timeout expired"
                    && status.metadata().is_empty() =>
            {
                // Not from the wire (no metadata at all): tonic's channel enforcing the deadline says CANCELLED
                // "Timeout expired"; reported as gRPC's DEADLINE_EXCEEDED
                let message = format!(
                    "deadline exceeded (client side: tonic's {})",
                    status.message()
                );
                filled.lock().unwrap().status =
                    Some((Code::DeadlineExceeded as i32, message, vec![]));
            }
            Err(status) => {
                // trailers-only: its metadata is the trailers
                let mut o = filled.lock().unwrap();
                o.trailers = Some(status.metadata().clone());
                o.status = Some(fail(&status));
            }
            Ok(response) => {
                filled.lock().unwrap().headers = Some(response.metadata().clone());
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(r)) => filled.lock().unwrap().responses.push(response_json(&r)),
                        Ok(None) => {
                            let trailers = stream.trailers().await;
                            let mut o = filled.lock().unwrap();
                            match trailers {
                                Ok(t) => {
                                    o.trailers = Some(t.unwrap_or_default());
                                    o.status = Some((0, String::new(), vec![]));
                                }
                                Err(status) => {
                                    o.trailers = Some(status.metadata().clone());
                                    o.status = Some(fail(&status));
                                }
                            }
                            break;
                        }
                        Err(status) => {
                            let mut o = filled.lock().unwrap();
                            o.trailers = Some(status.metadata().clone());
                            o.status = Some(fail(&status));
                            break;
                        }
                    }
                }
            }
        }
        Ok::<(), ()>(())
    };
    let never = Duration::from_secs(365 * 24 * 3600);
    let cancel_at = cancel_after.map(Duration::from_millis).unwrap_or(never);
    // tonic's channel enforces the deadline until the response headers; past them, the server's answer to
    // it gets 1 s more to arrive before the client gives up on its own
    let deadline = timeout
        .map(|ms| Duration::from_millis(ms + 1000))
        .unwrap_or(never);
    let mut abandoned = true;
    tokio::select! {
        _ = call => abandoned = false,
        _ = tokio::time::sleep(cancel_at) => {
            cancel_handle.cancel(); // RST_STREAM(CANCEL) while the input is open; dropping the call does it after
            outcome.lock().unwrap().status = Some((Code::Cancelled as i32, "cancelled by the client".into(), vec![]));
        }
        _ = tokio::time::sleep(deadline) => {
            outcome.lock().unwrap().status =
                Some((Code::DeadlineExceeded as i32, "deadline exceeded (client side)".into(), vec![]));
        }
    }
    if abandoned {
        // The call was dropped: give the connection's task a moment to write its RST_STREAM (CANCEL) before
        // the process ends, or the server would see the connection break instead of a cancelled call
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let o = outcome.lock().unwrap();
    let (code, message, details) =
        o.status
            .clone()
            .unwrap_or((Code::Unknown as i32, "no status".into(), vec![]));
    emit(json!({
        "status": code,
        "message": message,
        "details_b64": if details.is_empty() { Value::Null } else { json!(B64.encode(&details)) },
        "headers": o.headers.as_ref().map(metadata_json).unwrap_or(json!({})),
        "trailers": o.trailers.as_ref().map(metadata_json).unwrap_or(json!({})),
        "responses": o.responses,
    }));
    Ok(())
}

// --- main ---

const USAGE: &str = "usage: tonic-echo server --port 0 [--bind ADDR] [--register HOST:PORT --name NAME --version V \
--host HOST] [--tls-cert F --tls-key F [--tls-ca F]] [--main-tls-ca F [--main-cert F --main-key F] \
[--main-server-name N]] [--register-timeout-ms N] [--token-file F] [--gzip] [--log-calls] [--max-message-bytes N]\n       tonic-echo client --target \
HOST:PORT [--tls-ca F [--tls-cert F --tls-key F] [--server-name N]] [--token-file F] [--metadata k=v ...] \
[--timeout-ms N] [--gzip] [--cancel-after-ms N] [--count N] [--messages N] [--interval-ms N] [--payload-bytes N] \
[--max-message-bytes N] echo|repeat|collect|chat TEXT";

#[tokio::main]
async fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let result = match raw.split_first() {
        Some((cmd, rest)) if cmd == "server" || cmd == "client" => match Args::parse(rest) {
            Ok(args) if cmd == "server" => server(args).await,
            Ok(args) => client(args).await,
            Err(e) => Err(e),
        },
        _ => Err(USAGE.into()),
    };
    if let Err(e) = result {
        eprintln!("tonic-echo: {e}");
        std::process::exit(1);
    }
}
