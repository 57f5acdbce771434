//! xDS and the certificate service over TLS (istiod's 15012), with the
//! pilot's own serving certificate issued by the mesh CA. The CA directory
//! is watched, as istiod watches its plug-in `cacerts`: when its files have
//! changed (and stayed unchanged for one look, so a half-written set is not
//! taken) and load, the CA signs with them and the serving certificate is
//! re-issued by the new signer — new connections get it, open ones keep
//! theirs. Files that do not load are logged once, naming the file, and the
//! previous CA stays in use.
//!
//! ```text
//!  accept ─▶ TLS handshake (resolver: current serving cert) ─▶ tonic (ADS, CA)
//!  every 500 ms: CA files changed and stable? ─▶ Ca::load ─ok─▶ swap CA, re-issue serving cert
//!                                                          └err─▶ log, keep the previous CA
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use identity::{Ca, SpiffeId, WorkloadKey};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;

use crate::{CaOptions, PILOT_DNS_NAMES, PilotError, ca_service};

/// How often the CA directory is looked at.
const RELOAD_POLL: Duration = Duration::from_millis(500);
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The pilot's own certificate (SPIFFE id `istio-system/istiod` and istiod's
/// DNS names), as the CA of the moment issued it.
struct ServingCert {
    key: WorkloadKey,
    id: SpiffeId,
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A serving certificate for `key` from `ca`, ready for rustls.
fn issue(ca: &Ca, key: &WorkloadKey, id: &SpiffeId) -> Result<CertifiedKey, String> {
    let dns: Vec<String> = PILOT_DNS_NAMES.iter().map(|s| s.to_string()).collect();
    let issued = ca
        .issue_serving(
            key,
            id,
            &dns,
            identity::ca::MAX_WORKLOAD_TTL,
            SystemTime::now(),
        )
        .map_err(|e| e.to_string())?;
    let creds =
        identity::tls::Credentials::from_pem(&issued.chain, &key.private_key_pem(), &issued.roots)
            .map_err(|e| e.to_string())?;
    let signing = identity::tls::provider()
        .key_provider
        .load_private_key(creds.key)
        .map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(creds.chain, signing))
}

/// What the four plug-in files hold now (None: unreadable).
fn fingerprint(dir: &Path) -> Vec<Option<Vec<u8>>> {
    use identity::ca::{CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
    [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).ok())
        .collect()
}

/// Load the CA, give the pilot a serving certificate from it, and serve ADS
/// and the certificate service over TLS; the task also reloads the CA.
pub(crate) async fn serve(
    opts: &CaOptions,
    ads: xds::server::AdsService,
) -> Result<
    (
        SocketAddr,
        tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    ),
    PilotError,
> {
    let ca =
        Ca::from_dir(&opts.dir, &opts.trust_domain).map_err(|e| PilotError::Ca(e.to_string()))?;
    let key_text = std::fs::read_to_string(&opts.token_key)
        .map_err(|e| PilotError::Ca(format!("{}: {e}", opts.token_key.display())))?;
    let tokens = identity::LocalTokens::new(&key_text)
        .map_err(|e| PilotError::Ca(format!("{}: {e}", opts.token_key.display())))?;
    let key = WorkloadKey::generate().map_err(|e| PilotError::Ca(e.to_string()))?;
    let id = SpiffeId::new(&opts.trust_domain, "istio-system", "istiod");
    let first = issue(&ca, &key, &id).map_err(PilotError::Ca)?;
    let serving = Arc::new(ServingCert {
        key,
        id,
        current: ArcSwap::from_pointee(first),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(identity::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PilotError::Ca(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(serving.clone());
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let listener = TcpListener::bind(opts.secure_addr)
        .await
        .map_err(|source| PilotError::Bind {
            addr: opts.secure_addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(PilotError::Debug)?;
    tracing::info!(
        %addr,
        trust_domain = %opts.trust_domain,
        signer = %ca.signer(),
        roots = ca.roots().len(),
        "CA and xDS over TLS"
    );
    let state = Arc::new(ca_service::CaState {
        ca: ArcSwap::from_pointee(ca),
        tokens: Box::new(tokens),
        workload_ttl: opts.workload_ttl,
    });
    let (conns, incoming) = tokio::sync::mpsc::channel(64);
    let server = tonic::transport::Server::builder()
        .add_service(ads)
        .add_service(ca_service::CaService::new(state.clone()))
        .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(incoming));
    let reload = reload_on_change(opts.dir.clone(), opts.trust_domain.clone(), state, serving);
    Ok((
        addr,
        tokio::spawn(async move {
            tokio::select! {
                r = server => r,
                () = accept(listener, acceptor, conns) => Ok(()),
                () = reload => Ok(()),
            }
        }),
    ))
}

/// Accept connections and hand each to tonic once its handshake is done
/// (each handshake in its own task, so a slow client holds up no other).
async fn accept(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    conns: tokio::sync::mpsc::Sender<
        Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
    >,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept on the TLS port failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, conns) = (acceptor.clone(), conns.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = conns.send(Ok(tls)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Reload the CA (and re-issue the serving certificate) when its files
/// change; keep the previous one while they do not load.
async fn reload_on_change(
    dir: PathBuf,
    trust_domain: String,
    state: Arc<ca_service::CaState>,
    serving: Arc<ServingCert>,
) {
    let mut loaded = fingerprint(&dir);
    let mut seen = loaded.clone();
    let mut refused = None;
    loop {
        tokio::time::sleep(RELOAD_POLL).await;
        let now = fingerprint(&dir);
        if now == loaded || now != seen {
            seen = now;
            continue;
        }
        if refused.as_ref() == Some(&now) {
            continue;
        }
        let reloaded = Ca::load(&dir, &trust_domain)
            .map_err(|e| e.to_string())
            .and_then(|ca| Ok((issue(&ca, &serving.key, &serving.id)?, ca)));
        match reloaded {
            Ok((cert, ca)) => {
                tracing::info!(
                    dir = %dir.display(),
                    signer = %ca.signer(),
                    roots = ca.roots().len(),
                    "CA files changed: reloaded; workloads get the new chain and \
                     roots when they renew, the pilot serves a certificate from it"
                );
                state.ca.store(Arc::new(ca));
                serving.current.store(Arc::new(cert));
                loaded = now;
                refused = None;
            }
            Err(error) => {
                tracing::error!(
                    dir = %dir.display(),
                    %error,
                    "CA files changed but do not load: still signing with the previous CA"
                );
                refused = Some(now);
            }
        }
    }
}
