//! The wire for mail: a checked message goes to the operator's relay with
//! lettre. The relay password is read on the host, only here.

use super::check::{Checked, MailError};
use crate::capability::Denial;
use crate::policy::mail::{Relay, RelayTls};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

/// Sends a checked message through the relay. Returns the Message-ID.
pub async fn send(relay: &Relay, checked: &Checked) -> Result<String, MailError> {
    let mut builder = match relay.tls {
        RelayTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&relay.host),
        RelayTls::StartTls => {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&relay.host).map_err(|e| MailError::Connection(format!("relay {}: {e}", relay.name)))?
        }
        RelayTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&relay.host).map_err(|e| MailError::Connection(format!("relay {}: {e}", relay.name)))?,
    }
    .port(relay.port)
    .timeout(Some(relay.timeout));
    if let Some((user, source)) = &relay.auth {
        let password = source.read().map_err(|why| {
            // The guest hears that the password is missing, not where it should be.
            tracing::error!(relay = %relay.name, "relay password unavailable: {why}");
            MailError::Denied(Denial::new("relay-credential", format!("relay {} has no password on this host; the operator's log says why", relay.name)))
        })?;
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_string()));
    }
    let transport = builder.build();
    let id = checked.message.headers().get_raw("Message-ID").unwrap_or_default().to_string();
    match tokio::time::timeout(relay.timeout, transport.send(checked.message.clone())).await {
        Err(_) => Err(MailError::Timeout),
        Ok(Ok(_)) => Ok(id),
        Ok(Err(e)) if e.is_permanent() || e.is_transient() => Err(MailError::Rejected(e.to_string())),
        Ok(Err(e)) if e.is_timeout() => Err(MailError::Timeout),
        Ok(Err(e)) => Err(MailError::Connection(format!("relay {}: {e}", relay.name))),
    }
}
