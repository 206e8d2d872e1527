//! A fault-injecting TCP proxy on loopback, in the test process, in front of the broker or the
//! database.
//!
//! Why a proxy and not restarts: tansu's memory storage loses every record on restart, so a
//! broker "outage" that restarts tansu would also lose data the gateway already acknowledged,
//! which is a different failure (see docs/design.md, "Guarantees and failure modes"). Cutting the
//! network between the clients and a broker that keeps running is the outage a real deployment
//! sees (a partition, a dead load balancer, a broker host that stops answering), keeps the data,
//! and can be switched on and off in milliseconds. tansu is started with its advertised listener
//! pointing at the proxy ([`crate::Broker::start_advertising`]), so every connection a client
//! opens after reading metadata also goes through it. In front of the database the same proxy
//! throttles (a delay per chunk, a bandwidth cap) or holds back the server's answers.
//!
//! Modes:
//! - [`ProxyMode::Forward`]: bytes flow, subject to the configured delay and bandwidth.
//! - [`ProxyMode::Refuse`]: new connections are accepted and closed at once (a host whose port is
//!   closed); existing connections are cut when the mode is set.
//! - [`ProxyMode::Blackhole`]: new connections are accepted and then hear nothing (a network
//!   partition: the client only learns through its own timeouts); existing connections are cut.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How much one forwarding step reads at most.
const CHUNK_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Forward,
    Refuse,
    Blackhole,
}

/// What the proxy does to the bytes it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shaping {
    /// Added before each chunk going from the client to the server.
    pub upstream_delay: Duration,
    /// Added before each chunk going from the server back to the client.
    pub downstream_delay: Duration,
    /// Bytes per second in each direction of each connection; 0 = unlimited.
    pub bytes_per_second: u64,
}

impl Shaping {
    pub const NONE: Shaping = Shaping {
        upstream_delay: Duration::ZERO,
        downstream_delay: Duration::ZERO,
        bytes_per_second: 0,
    };
}

#[derive(Debug)]
struct Settings {
    upstream: Option<SocketAddr>,
    mode: ProxyMode,
    shaping: Shaping,
    /// Bumped to cut every open connection.
    generation: u64,
    connections_accepted: u64,
}

/// A running proxy; dropping it stops accepting and cuts every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    settings: Arc<Mutex<Settings>>,
    cut: watch::Sender<u64>,
    acceptor: JoinHandle<()>,
}

impl FaultProxy {
    /// Binds a free loopback port. Until [`FaultProxy::forward_to`] names the server, connections
    /// are accepted and closed.
    pub async fn bind() -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("proxy: cannot bind a loopback port: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy: no local address: {e}"));
        let settings = Arc::new(Mutex::new(Settings {
            upstream: None,
            mode: ProxyMode::Forward,
            shaping: Shaping::NONE,
            generation: 0,
            connections_accepted: 0,
        }));
        let (cut, _) = watch::channel(0);
        let acceptor = tokio::spawn(accept_loop(listener, settings.clone(), cut.clone()));
        FaultProxy {
            addr,
            settings,
            cut,
            acceptor,
        }
    }

    /// A proxy already forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let proxy = FaultProxy::bind().await;
        proxy.forward_to(upstream);
        proxy
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Where new connections go (connections already open keep their server).
    pub fn forward_to(&self, upstream: SocketAddr) {
        self.with_settings(|s| s.upstream = Some(upstream));
    }

    /// Switches the mode. Leaving [`ProxyMode::Forward`] cuts every open connection, as a network
    /// failure would; returning to it lets new connections through.
    pub fn set_mode(&self, mode: ProxyMode) {
        let cut = self.with_settings(|s| {
            let cut = mode != ProxyMode::Forward && s.mode != mode;
            s.mode = mode;
            cut
        });
        if cut {
            self.cut_connections();
        }
    }

    pub fn mode(&self) -> ProxyMode {
        self.with_settings(|s| s.mode)
    }

    /// Changes delay and bandwidth; applies to the next chunk of every connection.
    pub fn set_shaping(&self, shaping: Shaping) {
        self.with_settings(|s| s.shaping = shaping);
    }

    /// Closes every open connection now (both directions), whatever the mode.
    pub fn cut_connections(&self) {
        let generation = self.with_settings(|s| {
            s.generation += 1;
            s.generation
        });
        self.cut.send_replace(generation);
    }

    /// Connections accepted since the proxy started.
    pub fn connections_accepted(&self) -> u64 {
        self.with_settings(|s| s.connections_accepted)
    }

    fn with_settings<T>(&self, f: impl FnOnce(&mut Settings) -> T) -> T {
        f(&mut self.settings.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut_connections();
    }
}

async fn accept_loop(
    listener: TcpListener,
    settings: Arc<Mutex<Settings>>,
    cut: watch::Sender<u64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (mode, upstream, generation) = {
            let mut s = settings.lock().unwrap_or_else(PoisonError::into_inner);
            s.connections_accepted += 1;
            (s.mode, s.upstream, s.generation)
        };
        let mut cut_seen = cut.subscribe();
        cut_seen.mark_unchanged();
        match (mode, upstream) {
            (ProxyMode::Refuse, _) | (_, None) => drop(client),
            (ProxyMode::Blackhole, _) => {
                // Hold the socket open without reading until the next cut.
                tokio::spawn(async move {
                    let _client = client;
                    wait_for_cut(&mut cut_seen, generation).await;
                });
            }
            (ProxyMode::Forward, Some(upstream)) => {
                let settings = settings.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = pump(client_read, server_write, settings.clone(), Direction::Up);
                    let down = pump(server_read, client_write, settings, Direction::Down);
                    tokio::select! {
                        _ = async { tokio::join!(up, down) } => {}
                        _ = wait_for_cut(&mut cut_seen, generation) => {}
                    }
                    // Dropping the halves closes both sockets.
                });
            }
        }
    }
}

async fn wait_for_cut(cut_seen: &mut watch::Receiver<u64>, generation: u64) {
    loop {
        if *cut_seen.borrow_and_update() != generation {
            return;
        }
        if cut_seen.changed().await.is_err() {
            return;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// Copies one direction, chunk by chunk, applying the current shaping before each write; stops
/// at end of stream, on an error, or when the proxy stops forwarding.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    settings: Arc<Mutex<Settings>>,
    direction: Direction,
) {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let shaping = settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shaping;
        // With a bandwidth cap, read in slices of about 1/20 s worth, so pacing stays smooth.
        let limit = match shaping.bytes_per_second {
            0 => CHUNK_BYTES,
            rate => usize::try_from(rate / 20)
                .unwrap_or(CHUNK_BYTES)
                .clamp(64, CHUNK_BYTES),
        };
        let read = match from.read(&mut buffer[..limit]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (mode, shaping) = {
            let s = settings.lock().unwrap_or_else(PoisonError::into_inner);
            (s.mode, s.shaping)
        };
        if mode != ProxyMode::Forward {
            break;
        }
        let delay = match direction {
            Direction::Up => shaping.upstream_delay,
            Direction::Down => shaping.downstream_delay,
        };
        let pacing = match shaping.bytes_per_second {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(read as f64 / rate as f64),
        };
        if !(delay + pacing).is_zero() {
            tokio::time::sleep(delay + pacing).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut socket = TcpStream::connect(addr).await?;
        socket.write_all(b"ping").await?;
        let mut answer = vec![0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), socket.read_exact(&mut answer))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
        Ok(answer)
    }

    #[tokio::test]
    async fn forwards_refuses_blackholes_and_cuts() {
        let proxy = FaultProxy::start(echo_server().await).await;
        assert_eq!(round_trip(proxy.addr()).await.expect("forwarded"), b"ping");

        let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
        open.write_all(b"a").await.expect("write");
        let mut one = [0u8; 1];
        open.read_exact(&mut one).await.expect("echo");
        proxy.set_mode(ProxyMode::Refuse);
        // the open connection was cut
        assert_eq!(open.read(&mut one).await.unwrap_or(0), 0);
        assert!(round_trip(proxy.addr()).await.is_err(), "refused");

        proxy.set_mode(ProxyMode::Blackhole);
        let error = round_trip(proxy.addr()).await.expect_err("blackholed");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);

        proxy.set_mode(ProxyMode::Forward);
        assert_eq!(
            round_trip(proxy.addr()).await.expect("forwarded again"),
            b"ping"
        );
    }

    #[tokio::test]
    async fn delays_each_chunk() {
        let proxy = FaultProxy::start(echo_server().await).await;
        proxy.set_shaping(Shaping {
            downstream_delay: Duration::from_millis(300),
            ..Shaping::NONE
        });
        let started = std::time::Instant::now();
        assert_eq!(round_trip(proxy.addr()).await.expect("forwarded"), b"ping");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
