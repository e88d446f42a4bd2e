//! A TCP proxy that makes one command reach its server late: the client's deadline
//! passes, yet the server still runs it. What a store that times out after the
//! request was sent looks like, for a test to make it happen on cue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct DelayingProxy {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl DelayingProxy {
    /// Forwards every connection to `target`; the first chunk a client sends that
    /// contains `marker` is held back for `delay` (and what follows it on that
    /// connection with it, so the order holds). Later ones pass at once.
    pub async fn start(target: SocketAddr, marker: &'static [u8], delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let armed = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let armed = armed.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match client_read.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        if chunk.windows(marker.len()).any(|w| w == marker)
                            && armed.swap(false, Ordering::SeqCst)
                        {
                            tokio::time::sleep(delay).await;
                        }
                        if server_write.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        DelayingProxy { addr, task }
    }

    /// `redis://` at the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for DelayingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy whose open connections can be made to go silent on cue, sockets left
/// open (`silence`), while new ones are relayed: a server behind a virtual IP that
/// failed over, or a middlebox that drops the packets of established connections.
pub struct SilencingProxy {
    addr: SocketAddr,
    /// Bumped by `silence`: a relay started under an older generation stops relaying.
    generation: Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

impl SilencingProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let current = generation.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let born = current.load(Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (mut from, mut to) in [(client_read, server_write), (server_read, client_write)]
                {
                    let current = current.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            // Silenced: what is read is dropped, the socket held open.
                            if current.load(Ordering::SeqCst) != born {
                                continue;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        // Keep the other half open for as long as the test runs.
                        std::future::pending::<()>().await;
                        drop(to);
                    });
                }
            }
        });
        SilencingProxy {
            addr,
            generation,
            task,
        }
    }

    /// Every connection open now goes silent for good; later ones are relayed.
    pub fn silence(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// `redis://` at the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for SilencingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
