//! Registry authorization, negotiated here rather than inside oci-client so
//! that the token endpoint's reply is read through a cap.
//!
//! oci-client 0.18 reads a bearer-token reply (and a refused one's body)
//! whole into memory with no limit (`Client::auth` → `_auth` →
//! `Response::text()`), and offers no hook to bound it. So a session asks
//! `GET /v2/` for the registry's challenge itself, fetches the token from
//! the challenge's realm with [`read_capped`](super::client) at most
//! [`MAX_TOKEN_BYTES`], and hands oci-client the result as
//! `RegistryAuth::Bearer`, for which oci-client never contacts the realm.
//! Reads use the same grant as an `Authorization` header.

use oci_client::{RegistryOperation, secrets::RegistryAuth};
use serde::Deserialize;

use super::{
    client::{Session, read_capped, status_error},
    error::{OciError, clip},
    reference::Reference,
};

/// Most bytes of a token-endpoint reply read (a registry token is a few
/// KiB); a longer reply is refused without reading past this.
pub(super) const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// What a registry wants for one operation, negotiated once per session.
#[derive(Debug, Clone)]
pub(super) enum Grant {
    /// No bearer challenge: send the basic credentials if there are any
    /// (a registry behind htpasswd), else nothing.
    Direct,
    /// A bearer token from the challenge's realm.
    Bearer(String),
}

/// The token endpoint's reply (distribution's token spec; `access_token`
/// is the OAuth 2 spelling).
#[derive(Deserialize)]
struct TokenReply {
    token: Option<String>,
    access_token: Option<String>,
}

impl Session {
    /// The grant for `operation`: the registry's `GET /v2/` challenge, and
    /// for a bearer challenge a token from its realm (with the basic
    /// credentials, if any, and the repository scope). Cost: two requests;
    /// at most [`MAX_TOKEN_BYTES`] of reply held.
    pub(super) async fn negotiate(
        &self,
        reference: &Reference,
        operation: RegistryOperation,
    ) -> Result<Grant, OciError> {
        let base = format!("{}://{}/v2/", self.scheme, self.target.resolve_registry());
        let challenge = self
            .http
            .get(&base)
            .send()
            .await
            .map_err(|e| self.transport_error(reference, &base, e))?;
        let Some((realm, service)) = challenge
            .headers()
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(bearer_challenge)
        else {
            return Ok(Grant::Direct);
        };
        drop(challenge);
        let actions = match operation {
            RegistryOperation::Pull => "pull",
            RegistryOperation::Push => "pull,push",
        };
        let scope = format!("repository:{}:{actions}", self.target.repository());
        let mut query = vec![("scope", scope.as_str())];
        if let Some(service) = &service {
            query.push(("service", service.as_str()));
        }
        let mut request = self.http.get(&realm).query(&query);
        if let Some((user, pass)) = &self.basic {
            request = request.basic_auth(user, Some(pass));
        }
        let mut reply = request
            .send()
            .await
            .map_err(|e| self.transport_error(reference, &realm, e))?;
        let status = reply.status();
        let invalid = |what: String| OciError::Protocol {
            reference: reference.to_string(),
            message: format!("the token reply from {}: {what}", clip(&realm)),
        };
        let too_long = |size: String| {
            invalid(format!(
                "it {size}, past the limit of {MAX_TOKEN_BYTES} bytes (a token is a few KiB); refused without reading further"
            ))
        };
        if status.is_success()
            && let Some(declared) = reply.content_length()
            && declared > MAX_TOKEN_BYTES
        {
            return Err(too_long(format!("declares {declared} bytes")));
        }
        let (body, truncated) = read_capped(&mut reply, MAX_TOKEN_BYTES)
            .await
            .map_err(|e| self.transport_error(reference, &realm, e))?;
        if !status.is_success() {
            // Any refusal by the realm means the credentials do not do.
            let code = match status.as_u16() {
                400..=499 => 401,
                code => code,
            };
            return Err(status_error(
                code,
                String::from_utf8_lossy(&body).into_owned(),
                &self.registry,
                reference,
            ));
        }
        if truncated {
            return Err(too_long("runs on".to_owned()));
        }
        let reply: TokenReply = serde_json::from_slice(&body)
            .map_err(|e| invalid(format!("not a token document: {}", clip(&e.to_string()))))?;
        match reply.token.or(reply.access_token) {
            Some(token) if !token.is_empty() => Ok(Grant::Bearer(token)),
            _ => Err(invalid("it holds no token".into())),
        }
    }

    /// The `Authorization` header for reads, negotiated once (pull scope):
    /// the bearer token, else the basic credentials, else none.
    pub(super) async fn authorization(
        &self,
        reference: &Reference,
    ) -> Result<Option<http::HeaderValue>, OciError> {
        if let Some(header) = self.authorization.get() {
            return Ok(header.clone());
        }
        let header = match self.negotiate(reference, RegistryOperation::Pull).await? {
            Grant::Bearer(token) => http::HeaderValue::from_str(&format!("Bearer {token}")).ok(),
            Grant::Direct => self.basic.as_ref().and_then(|(user, pass)| {
                use base64::Engine as _;
                let raw =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                http::HeaderValue::from_str(&format!("Basic {raw}")).ok()
            }),
        };
        let _ = self.authorization.set(header.clone());
        Ok(header)
    }

    /// What oci-client is given for pushes, negotiated once (push scope): a
    /// bearer token (so oci-client never fetches one itself), else the
    /// credentials as they are.
    pub(super) fn push_auth(&self, reference: &Reference) -> Result<RegistryAuth, OciError> {
        if let Some(auth) = self.push_auth.get() {
            return Ok(auth.clone());
        }
        let auth = match self.retry_mapped(|| self.negotiate(reference, RegistryOperation::Push))? {
            Grant::Bearer(token) => RegistryAuth::Bearer(token),
            Grant::Direct => self.auth.clone(),
        };
        let _ = self.push_auth.set(auth.clone());
        Ok(auth)
    }
}

/// The realm and service of a `Bearer` challenge in one `WWW-Authenticate`
/// value, if it has one with a realm.
fn bearer_challenge(value: &str) -> Option<(String, Option<String>)> {
    let challenges = http_auth::parse_challenges(value).ok()?;
    let bearer = challenges
        .iter()
        .find(|c| c.scheme.eq_ignore_ascii_case("Bearer"))?;
    let param = |name: &str| {
        bearer
            .params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_unescaped())
    };
    Some((param("realm")?, param("service")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_parsed() {
        assert_eq!(
            bearer_challenge(r#"Bearer realm="https://auth.example/token",service="reg.example""#),
            Some((
                "https://auth.example/token".into(),
                Some("reg.example".into())
            ))
        );
        assert_eq!(
            bearer_challenge(r#"Basic realm="x", Bearer realm="https://a/t""#),
            Some(("https://a/t".into(), None))
        );
        assert_eq!(bearer_challenge(r#"Basic realm="soma-test""#), None);
        assert_eq!(bearer_challenge(r#"Bearer service="no-realm""#), None);
    }
}
