//! Where the core accepts connections: its TCP port (tenants, and the gateway by default) and,
//! when `PAYBRIDGE_GRPC_SOCKET` is set, a Unix socket for a gateway in the same pod. Both feed
//! one server, so every call gets the same services, layers and credentials check.
//!
//! With TLS configured (`tls.rs`) the TCP port speaks only TLS: each accepted connection's
//! handshake runs in its own task (a slow or silent client holds up nobody), with the config in
//! force when it was accepted; a connection whose handshake fails (a plaintext client, an unknown
//! client certificate) is closed and never reaches the server. The socket stays plain.
//!
//! Over the socket the gateway's hop skips TCP: on loopback, sending to the gateway runs its
//! receive path too, and that path was a large share of serve's CPU on a settled return
//! (bench/README.md).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::Context as _;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

use super::tls::CoreTls;

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One accepted connection.
#[derive(Debug)]
pub enum CoreConnection {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// What the server knows of a call's connection (in each request's extensions).
#[derive(Debug, Clone)]
pub struct CoreConnectInfo {
    /// The TCP peer, if the call came over TCP (plain or TLS).
    pub tcp: Option<TcpConnectInfo>,
    /// The client certificate the TLS handshake verified against `PAYBRIDGE_GRPC_TLS_CLIENT_CA`,
    /// if the client presented one.
    pub client_cert: Option<CertificateDer<'static>>,
}

/// The core's Unix socket: bound at start, its file removed when this is dropped.
#[derive(Debug)]
pub struct CoreSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl CoreSocket {
    /// Binds `path`, replacing a socket a previous run left behind (never any other file, nor a
    /// socket another process still serves on). Owner and group may connect (the gateway
    /// container runs as the same user); every call still needs the gateway's token.
    pub fn bind(path: &Path) -> anyhow::Result<CoreSocket> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    anyhow::bail!("another process serves on {}", path.display());
                }
                std::fs::remove_file(path)
                    .with_context(|| format!("removing the old socket {}", path.display()))?;
            }
            Ok(_) => anyhow::bail!("{} exists and is not a socket", path.display()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("checking {}", path.display()));
            }
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        let socket = CoreSocket {
            listener,
            path: path.to_owned(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        Ok(socket)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CoreSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Accepted connections, as a stream.
impl Stream for CoreSocket {
    type Item = io::Result<CoreConnection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.listener
            .poll_accept(cx)
            .map(|accepted| Some(accepted.map(|(stream, _)| CoreConnection::Unix(stream))))
    }
}

/// The connections of both listeners, as they come. TCP connections get `TCP_NODELAY`: an answer
/// is headers, data and trailers in separate writes, and with Nagle on the last one waits for the
/// client's delayed ACK (about 40 ms per call). The socket's file is removed when the stream is
/// dropped (the server stopped).
pub fn incoming(
    tcp: TcpListener,
    socket: Option<CoreSocket>,
    tls: Option<CoreTls>,
) -> impl Stream<Item = io::Result<CoreConnection>> + Send + 'static {
    let accepted = TcpIncoming::from(tcp).with_nodelay(Some(true));
    let tcp: Pin<Box<dyn Stream<Item = io::Result<CoreConnection>> + Send>> = match tls {
        None => Box::pin(accepted.map(|accepted| accepted.map(CoreConnection::Tcp))),
        Some(tls) => Box::pin(tls_handshakes(accepted, tls)),
    };
    let unix: Pin<Box<dyn Stream<Item = io::Result<CoreConnection>> + Send>> = match socket {
        Some(socket) => Box::pin(socket),
        None => Box::pin(tokio_stream::pending()),
    };
    tcp.merge(unix)
}

/// The connections of `accepted` whose TLS handshake succeeded, as they finish. The accepting
/// task stops when the stream is dropped (the server stopped).
fn tls_handshakes(
    mut accepted: TcpIncoming,
    tls: CoreTls,
) -> impl Stream<Item = io::Result<CoreConnection>> + Send + 'static {
    let (ready, handshaken) = mpsc::channel::<io::Result<CoreConnection>>(64);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = ready.closed() => return,
                next = accepted.next() => match next {
                    None => return,
                    Some(Err(error)) => {
                        if ready.send(Err(error)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Ok(stream)) => stream,
                },
            };
            let acceptor = tls.acceptor();
            let ready = ready.clone();
            tokio::spawn(async move {
                let peer = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(Ok(CoreConnection::Tls(Box::new(stream)))).await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(?peer, %error, "TLS handshake failed");
                    }
                    Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(handshaken)
}

impl Connected for CoreConnection {
    type ConnectInfo = CoreConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            CoreConnection::Tcp(stream) => CoreConnectInfo {
                tcp: Some(stream.connect_info()),
                client_cert: None,
            },
            CoreConnection::Tls(stream) => {
                let (tcp, session) = stream.get_ref();
                CoreConnectInfo {
                    tcp: Some(tcp.connect_info()),
                    client_cert: session
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| cert.clone().into_owned()),
                }
            }
            CoreConnection::Unix(_) => CoreConnectInfo {
                tcp: None,
                client_cert: None,
            },
        }
    }
}

impl AsyncRead for CoreConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            CoreConnection::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            CoreConnection::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            CoreConnection::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for CoreConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            CoreConnection::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            CoreConnection::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            CoreConnection::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            CoreConnection::Tcp(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            CoreConnection::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
            CoreConnection::Unix(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            CoreConnection::Tcp(stream) => stream.is_write_vectored(),
            CoreConnection::Tls(stream) => stream.is_write_vectored(),
            CoreConnection::Unix(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            CoreConnection::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            CoreConnection::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            CoreConnection::Unix(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            CoreConnection::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            CoreConnection::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            CoreConnection::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_left_behind_is_replaced_and_the_file_goes_when_the_socket_is_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("core.sock");
        // A crashed run leaves its socket file, with nobody listening: the next start binds.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("a socket"));
        assert!(path.exists());
        let second = CoreSocket::bind(&path).expect("bind over a stale socket");
        let mode = std::fs::metadata(&path)
            .expect("socket file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o660);
        drop(second);
        assert!(!path.exists(), "the socket file is removed");
    }

    #[tokio::test]
    async fn a_socket_another_process_serves_on_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("core.sock");
        let serving = CoreSocket::bind(&path).expect("bind");
        let error = CoreSocket::bind(&path).expect_err("in use");
        assert!(
            error.to_string().contains("another process serves"),
            "{error:#}"
        );
        assert!(path.exists(), "the live socket is left alone");
        drop(serving);
    }

    #[tokio::test]
    async fn a_path_that_is_not_a_socket_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("core.sock");
        std::fs::write(&path, "data").expect("a file");
        let error = CoreSocket::bind(&path).expect_err("not a socket");
        assert!(error.to_string().contains("not a socket"), "{error:#}");
        assert_eq!(std::fs::read_to_string(&path).expect("still there"), "data");
    }
}
