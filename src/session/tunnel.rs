//! Redis across the tailnet, with no tailscaled on any host:
//!
//! - the host that runs Redis **shares** it on one of its nodes, at the
//!   Redis port, to the tailnet peers the config names (tags or users,
//!   checked with WhoIs before a byte is carried; everyone else is cut off);
//! - every other host **dials** it through its own node: the Redis client
//!   connects to a Unix socket (mode 0600, in the portal's private state
//!   directory) whose connections this module carries to the tailnet
//!   address.
//!
//! The records stay sealed with the session secret on the way and at rest,
//! so whoever stands at the far end without that secret can refuse service
//! but cannot make up a session.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::store::StoreError;
use crate::config::Share;
use crate::oidc::Dialer;
use crate::tailnet::{Node, WhoIs};

/// How long a dial through the tailnet may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many carried connections at once, either way (a Redis
/// client uses two: commands and the revocation channel).
const MAX_CONNS: usize = 256;

/// The socket the Redis client dials for a tailnet store.
pub(super) fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("redis-tailnet.sock")
}

/// Carries connections to `path` (a Unix socket created here, mode 0600)
/// to `addr` (`host:port` on the tailnet) through the dialer's node.
pub(super) fn dial_through(
    path: &Path,
    dialer: Dialer,
    addr: String,
) -> Result<JoinHandle<()>, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
        super::file::set_mode(dir, 0o700);
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    super::file::set_mode(path, 0o600);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNS));
    Ok(tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue;
            };
            let (dialer, addr) = (dialer.clone(), addr.clone());
            tokio::spawn(async move {
                carry_out(conn, &dialer, &addr).await;
                drop(permit);
            });
        }
    }))
}

async fn carry_out(mut conn: UnixStream, dialer: &Dialer, addr: &str) {
    let Some(node) = dialer.node.get().cloned() else {
        tracing::debug!(store = addr, "session store: the node is not up yet");
        return;
    };
    let mut remote = match tokio::time::timeout(DIAL_TIMEOUT, node.dial(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(store = addr, error = %e, "session store: dialing through the tailnet");
            return;
        }
        Err(_) => {
            tracing::debug!(
                store = addr,
                "session store: dialing through the tailnet timed out"
            );
            return;
        }
    };
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut remote).await;
}

/// Whether `who` may reach the shared store.
fn allowed(share: &Share, who: &WhoIs) -> bool {
    if who.is_tagged() {
        who.node.tags.iter().any(|t| share.tags.contains(t))
    } else {
        share.users.contains(&who.user.login_name)
    }
}

/// Serves the Redis at `target` (`host:port`, this host's network) on
/// `node`'s tailnet addresses at `port`, to the peers `share` names: starts
/// listening, and returns the accept loop to run.
pub(crate) async fn share(
    node: Node,
    port: u16,
    target: String,
    share: Share,
) -> crate::tailnet::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let listener = node.listen(port).await?;
    tracing::info!(node = %share.node, port, tags = ?share.tags, users = ?share.users,
        "sharing the session store on the tailnet");
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNS));
    let share = Arc::new(share);
    Ok(async move {
        loop {
            let (conn, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(crate::tailnet::Error::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "session store share: accept");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "session store share: too many connections; refused");
                continue;
            };
            let (node, share, target) = (node.clone(), share.clone(), target.clone());
            tokio::spawn(async move {
                carry_in(conn, peer, &node, &share, &target).await;
                drop(permit);
            });
        }
    })
}

async fn carry_in(
    mut conn: crate::tailnet::TailnetStream,
    peer: std::net::SocketAddr,
    node: &Node,
    share: &Share,
    target: &str,
) {
    let who = match node.whois(peer).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "session store share: no WhoIs; refused");
            return;
        }
    };
    if !allowed(share, &who) {
        tracing::warn!(%peer, node = %who.node.name, "session store share: peer not in share_with_tags/share_with_users; refused");
        return;
    }
    let mut local = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(store = target, error = %e, "session store share: cannot reach the store");
            return;
        }
        Err(_) => {
            tracing::warn!(store = target, "session store share: connecting timed out");
            return;
        }
    };
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut local).await;
}
