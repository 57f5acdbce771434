//! Asking the CA for a certificate, as pilot-agent does: a CSR and the
//! workload's token as `authorization: Bearer ...`.

use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;

use crate::proto::{CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse};

/// Send `csr` to the CA on `channel`; the chain comes back leaf first.
pub async fn create_certificate(
    channel: tonic::transport::Channel,
    csr: &str,
    token: &str,
    ttl: Duration,
) -> Result<Vec<String>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("CA not reachable: {e}")))?;
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_string(),
        validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    });
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| tonic::Status::invalid_argument("token is not a valid header value"))?;
    request.metadata_mut().insert("authorization", bearer);
    let codec =
        tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
    let response = grpc
        .unary(
            request,
            PathAndQuery::from_static(CREATE_CERTIFICATE),
            codec,
        )
        .await?;
    Ok(response.into_inner().cert_chain)
}
