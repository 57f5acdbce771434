//! Istio's certificate service (`istio.v1.auth.IstioCertificateService/
//! CreateCertificate`), as istiod serves it on 15012: a workload sends a CSR
//! and its service-account token (`authorization: Bearer ...`); the CA signs
//! the CSR only for the SPIFFE id that token proves. Refusals are logged
//! with their reason (never the token) and answered with gRPC's codes:
//! UNAUTHENTICATED (no or bad token), PERMISSION_DENIED (a CSR for another
//! identity), INVALID_ARGUMENT (not a CSR). The answer is istiod's shape:
//! the leaf, the intermediates, and last the whole trust bundle (every root
//! of `root-cert.pem`) in one element.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use identity::proto::{CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse};
use identity::{Ca, SignError, SpiffeId, TokenVerifier};
use tonic::Status;
use tonic::server::NamedService;

/// The CA behind the gRPC service.
pub struct CaState {
    /// Swapped whole when the CA directory is reloaded ([`crate::secure`]).
    pub ca: arc_swap::ArcSwap<Ca>,
    pub tokens: Box<dyn TokenVerifier>,
    /// Used when the request asks for no particular lifetime.
    pub workload_ttl: Duration,
}

impl CaState {
    /// Answer one CreateCertificate call.
    pub fn create(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<IstioCertificateResponse, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .trim()
            .to_string();
        let account = self.tokens.verify(&token).map_err(|e| {
            tracing::warn!(%peer, reason = %e, "CSR refused: caller not authenticated");
            Status::unauthenticated(e.to_string())
        })?;
        let ca = self.ca.load();
        let caller = SpiffeId::new(ca.trust_domain(), &account.namespace, &account.name);
        let req = request.into_inner();
        let ttl = match u64::try_from(req.validity_duration) {
            Ok(0) | Err(_) => self.workload_ttl,
            Ok(s) => Duration::from_secs(s),
        };
        let issued = ca
            .sign(&req.csr, &caller, ttl, SystemTime::now())
            .map_err(|e| {
                tracing::warn!(%peer, %caller, reason = %e, "CSR refused");
                match e {
                    SignError::Malformed(_) => Status::invalid_argument(e.to_string()),
                    SignError::Identity { .. } | SignError::TrustDomain { .. } => {
                        Status::permission_denied(e.to_string())
                    }
                    SignError::Sign(_) => Status::internal(e.to_string()),
                }
            })?;
        tracing::info!(%peer, %caller, serial = %issued.serial, "certificate issued");
        Ok(IstioCertificateResponse {
            cert_chain: issued.cert_chain(),
        })
    }
}

/// The gRPC service for tonic's router.
#[derive(Clone)]
pub struct CaService {
    state: Arc<CaState>,
}

impl CaService {
    pub fn new(state: Arc<CaState>) -> CaService {
        CaService { state }
    }
}

impl NamedService for CaService {
    const NAME: &'static str = identity::proto::SERVICE;
}

struct Unary(Arc<CaState>);

impl tonic::server::UnaryService<IstioCertificateRequest> for Unary {
    type Response = IstioCertificateResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, Status>>;

    fn call(&mut self, request: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        std::future::ready(self.0.create(request).map(tonic::Response::new))
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for CaService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != CREATE_CERTIFICATE {
            return Box::pin(std::future::ready(
                Ok(Status::unimplemented("").into_http()),
            ));
        }
        let svc = Unary(self.state.clone());
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<IstioCertificateResponse, IstioCertificateRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.unary(svc, req).await)
        })
    }
}
