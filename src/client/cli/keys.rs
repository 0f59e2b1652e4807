//! `latchkey key`: USB devices, enrolling a key, signing a digest.

use super::*;

#[derive(Subcommand)]
pub(super) enum KeyCommand {
    /// List plugged-in FIDO2 security keys.
    Devices,
    /// Enroll a key for an operator: at once during genesis; afterwards it becomes a proposed
    /// change that admins approve (`--note` says who checked the operator's identity, how).
    Enroll {
        /// Operator name.
        #[arg(long)]
        operator: String,
        /// Role (repeatable), e.g. admin. Only used when the operator is new.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Proofing note, required after genesis: who checked whose identity, how, on which
        /// channel.
        #[arg(long, default_value = "")]
        note: String,
        /// With --piv: generate a new P-256 key in the slot, on the device (default management
        /// key), with these policies. Without it the slot's existing key is enrolled.
        #[arg(long, requires = "piv")]
        generate: bool,
        /// With --generate: touch policy (always, cached, never).
        #[arg(long, default_value = "always", value_parser = parse_touch)]
        touch_policy: crate::verify::piv::TouchPolicy,
        /// With --generate: PIN policy (always, once, never).
        #[arg(long, default_value = "once", value_parser = parse_pin)]
        pin_policy: crate::verify::piv::PinPolicy,
        #[command(flatten)]
        key: KeyChoice,
    },
    /// Sign a digest of what you approve (SHA-256, hex) with your key.
    Sign {
        /// Operator name.
        #[arg(long)]
        operator: String,
        /// SHA-256 of what is approved, 64 hex characters.
        #[arg(long)]
        digest: String,
        #[command(flatten)]
        key: KeyChoice,
    },
}

fn parse_touch(s: &str) -> Result<crate::verify::piv::TouchPolicy, String> {
    match s {
        "always" => Ok(crate::verify::piv::TouchPolicy::Always),
        "cached" => Ok(crate::verify::piv::TouchPolicy::Cached),
        "never" => Ok(crate::verify::piv::TouchPolicy::Never),
        other => Err(format!("{other}: use always, cached or never")),
    }
}

fn parse_pin(s: &str) -> Result<crate::verify::piv::PinPolicy, String> {
    match s {
        "always" => Ok(crate::verify::piv::PinPolicy::Always),
        "once" => Ok(crate::verify::piv::PinPolicy::Once),
        "never" => Ok(crate::verify::piv::PinPolicy::Never),
        other => Err(format!("{other}: use always, once or never")),
    }
}

/// `latchkey key devices`: the plugged-in FIDO2 keys (exit 1 if none).
pub(super) fn devices() -> ExitCode {
    let devices = client::authenticator::usb_devices();
    if devices.is_empty() {
        eprintln!("latchkey: no FIDO2 security key found");
        return ExitCode::FAILURE;
    }
    for line in devices {
        say!("{line}");
    }
    ExitCode::SUCCESS
}

/// `latchkey key enroll` and `sign` (`devices` needs no daemon: [`devices`]).
pub(super) async fn run(channel: Channel, command: KeyCommand) -> Result<(), ClientError> {
    match command {
        KeyCommand::Devices => Ok(()),
        KeyCommand::Enroll {
            operator,
            roles,
            note,
            generate,
            touch_policy,
            pin_policy,
            key,
        } => {
            let mut authenticator: Box<dyn Authenticator> = if generate {
                Box::new(client::piv_card::UsbPiv::generate(
                    &key.slot,
                    pin_policy,
                    touch_policy,
                    piv_pin()?,
                )?)
            } else {
                key.open_or_create()?
            };
            let enrolled = client::enroll(
                channel,
                &operator,
                roles,
                authenticator.as_mut(),
                key.origin.as_deref(),
                &note,
            )
            .await?;
            report_enrolled(&enrolled);
            Ok(())
        }
        KeyCommand::Sign {
            operator,
            digest,
            key,
        } => sign(channel, &operator, &digest, &key).await,
    }
}

fn report_enrolled(enrolled: &pb::FinishEnrollmentResponse) {
    if !enrolled.change_id.is_empty() {
        say!(
            "key {} for operator {} proposed as change {}: admins approve it with `{}`",
            enrolled.credential_id,
            enrolled.operator,
            enrolled.change_id,
            hints::approve_change(&enrolled.change_id)
        );
        return;
    }
    say!(
        "enrolled key {} for operator {} (AAGUID {}); genesis {}",
        enrolled.credential_id,
        enrolled.operator,
        if enrolled.aaguid.is_empty() {
            "unknown"
        } else {
            &enrolled.aaguid
        },
        if enrolled.genesis() == pb::GenesisState::Closed {
            "closed: from now on every operator, scope and workload needs the trust-store quorum \
             of admin approvals"
        } else {
            "open: enrollments and changes apply at once until enrolled admins reach the \
             trust-store quorum (enroll the quorum-completing admin last)"
        }
    );
}

async fn sign(
    channel: Channel,
    operator: &str,
    digest: &str,
    key: &KeyChoice,
) -> Result<(), ClientError> {
    let digest: [u8; 32] = hex::decode(digest)
        .ok()
        .and_then(|d| d.try_into().ok())
        .ok_or_else(|| ClientError::File {
            path: PathBuf::from("--digest"),
            detail: "expected 64 hex characters (a SHA-256)".to_owned(),
        })?;
    let mut authenticator = key.open()?;
    let signed = client::sign_digest(
        channel,
        operator,
        digest,
        authenticator.as_mut(),
        key.origin.as_deref(),
    )
    .await?;
    say!(
        "verified: {} with key {} (user verified: {}, counter {}), audit record {}",
        signed.operator,
        signed.credential_id,
        signed.user_verified,
        signed.counter,
        signed.audit_seq
    );
    Ok(())
}
