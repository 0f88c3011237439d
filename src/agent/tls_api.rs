//! The API calls of the cluster's security: `cluster join-token [--rotate]` and
//! `cluster ca rotate [--finish [--force]]`. Keys are drawn here, outside apply, which stays
//! pure; the state machine checks sizes and the order of events.

use std::sync::Arc;
use std::time::SystemTime;

use vxnet_controlplane::transport::pki::{Ca, cert_digest};
use vxnet_controlplane::transport::token::{JoinKey, format_token};
use vxnet_proto::api_response::Kind as Resp;
use vxnet_proto::{
    ApiResponse, CaCert, CaRotateRequest, ErrorKind, FinishCaRotation, JoinToken, JoinTokenRequest,
    RotateCa, SetJoinKey, command,
};

use super::server::{error, from_submit};
use super::{Agent, unix_ms};

fn no_tls_yet() -> ApiResponse {
    error(
        ErrorKind::Invalid,
        "this cluster has no CA yet: it is still being upgraded from a release without \
         mutual TLS (every host must run this release first); meanwhile hosts join with the \
         shared secret (--token)"
            .into(),
    )
}

/// `cluster join-token [--rotate]`: the token of the CA peers trust now and the current join
/// secret; `rotate` replaces the secret first.
pub async fn join_token(agent: &Agent, request: JoinTokenRequest) -> ApiResponse {
    if request.rotate {
        if agent.driver.view().state.tls().is_none() {
            return no_tls_yet();
        }
        let key = match JoinKey::generate() {
            Ok(k) => k,
            Err(e) => return error(ErrorKind::Unspecified, e.to_string()),
        };
        let command = command::Kind::SetJoinKey(SetJoinKey {
            join_key: key.as_bytes().to_vec(),
            unix_ms: unix_ms(),
        });
        let answer = from_submit(agent.submit(command).await);
        if matches!(answer.kind, Some(Resp::Error(_))) {
            return answer;
        }
    }
    let state = Arc::clone(&agent.driver.view().state);
    let (Some((ca, _)), Some(key)) = (state.signer(), state.join_key()) else {
        return no_tls_yet();
    };
    let Some(key) = JoinKey::from_bytes(key) else {
        return error(
            ErrorKind::Unspecified,
            "the replicated join secret has a wrong length".into(),
        );
    };
    ApiResponse {
        kind: Some(Resp::JoinToken(JoinToken {
            token: format_token(&cert_digest(&ca.cert), &key),
            peer_addr: agent.config.peer_listen.to_string(),
        })),
    }
}

/// `cluster ca rotate`: a new CA, certified by the current one so that hosts which have not
/// applied the rotation yet still accept certificates of the new one; `finish` stops trusting
/// the previous CA.
pub async fn ca_rotate(agent: &Agent, request: CaRotateRequest) -> ApiResponse {
    let view = agent.driver.view();
    let state = Arc::clone(&view.state);
    let Some((signer, signer_key)) = state.signer() else {
        return no_tls_yet();
    };
    if request.finish {
        let command = command::Kind::FinishCaRotation(FinishCaRotation {
            generation: signer.generation,
            force: request.force,
        });
        return from_submit(agent.submit(command).await);
    }
    if request.force {
        return error(ErrorKind::Invalid, "--force goes with --finish".into());
    }
    let current = match Ca::from_der(&signer.cert, signer_key) {
        Ok(ca) => ca,
        Err(e) => return error(ErrorKind::Unspecified, format!("the current CA: {e}")),
    };
    let now = SystemTime::now();
    let next = match Ca::generate(view.cluster_id, signer.generation + 1, now) {
        Ok(ca) => ca,
        Err(e) => return error(ErrorKind::Unspecified, format!("a new CA: {e}")),
    };
    let cross = match current.cross_sign(&next, now) {
        Ok(c) => c,
        Err(e) => return error(ErrorKind::Unspecified, format!("cross-signing: {e}")),
    };
    let command = command::Kind::RotateCa(RotateCa {
        ca: Some(CaCert {
            generation: next.generation(),
            cert: next.cert().to_vec(),
        }),
        ca_key: next.key_pkcs8_der(),
        cross_cert: cross.to_vec(),
    });
    from_submit(agent.submit(command).await)
}
