//! Authenticators the CLI talks to: a FIDO2 security key over USB HID (ctap-hid-fido2), or a
//! software token kept in a file (webauthn-authenticator-rs `SoftToken`: tests, demos, drills —
//! a daemon outside dev mode refuses its attestation). Both turn the daemon's W3C options into
//! a W3C response (authenticatorData, clientDataJSON, signature) that webauthn-rs verifies.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use webauthn_authenticator_rs::WebauthnAuthenticator as _;
use webauthn_authenticator_rs::softtoken::SoftToken;
use webauthn_rs::prelude::{
    CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse, Url,
};
use webauthn_rs_proto::UserVerificationPolicy;

/// Errors talking to an authenticator. Each message says what the person at the key should do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No FIDO2 key is visible. Plug one in; on Linux the user needs access to its hidraw node.
    #[error(
        "no FIDO2 security key found: plug one in (on Linux you need read/write access to its /dev/hidraw node: install udev/70-latchkey.rules and join the latchkey group)"
    )]
    NoKey,
    /// More than one key is plugged in and none was chosen.
    #[error(
        "{0} FIDO2 keys are plugged in; choose one with --device N (see `latchkey key devices`)"
    )]
    SeveralKeys(usize),
    /// The chosen device index does not exist.
    #[error("no FIDO2 key number {0} (see `latchkey key devices`)")]
    NoSuchDevice(usize),
    /// The key was not touched in time, or the PIN was wrong or blocked.
    #[error("security key: {0}")]
    Device(String),
    /// The soft-token file cannot be read or written.
    #[error("soft token {path}: {detail}")]
    SoftToken {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The daemon's options are not usable (bad JSON, bad RP id).
    #[error("the daemon's WebAuthn options: {0}")]
    Options(String),
}

/// The origin a client claims: `origin`, or `https://` + the relying-party id the daemon asked
/// for (matching latchkeyd's default `[fido2] origin`).
pub fn origin_for(rp_id: &str, origin: Option<&str>) -> Result<Url, KeyError> {
    let text = origin.map_or_else(|| format!("https://{rp_id}"), str::to_owned);
    Url::parse(&text).map_err(|e| KeyError::Options(format!("origin {text}: {e}")))
}

/// Something that can register a credential and sign assertions.
pub trait Authenticator {
    /// Answers an enrollment ceremony with the JSON `FinishEnrollment` takes. FIDO2 keys
    /// register a WebAuthn credential; PIV keys send their attestation and sign `piv_challenge`.
    fn enroll(
        &mut self,
        origin: Option<&str>,
        options_json: &str,
        _piv_challenge: &[u8],
    ) -> Result<String, KeyError> {
        let options: CreationChallengeResponse =
            serde_json::from_str(options_json).map_err(|e| KeyError::Options(e.to_string()))?;
        let origin = origin_for(&options.public_key.rp.id, origin)?;
        let credential = self.register(&origin, options)?;
        serde_json::to_string(&credential).map_err(|e| KeyError::Options(e.to_string()))
    }

    /// Answers an assertion ceremony with the JSON the Finish/Cast/Revoke calls take. FIDO2
    /// keys sign the WebAuthn options; PIV keys sign `piv_challenge`.
    fn respond(
        &mut self,
        origin: Option<&str>,
        options_json: &str,
        _piv_challenge: &[u8],
    ) -> Result<String, KeyError> {
        if options_json.is_empty() {
            return Err(KeyError::Options(
                "this operator has no FIDO2 key enrolled: use their PIV key (--piv)".into(),
            ));
        }
        let options: RequestChallengeResponse =
            serde_json::from_str(options_json).map_err(|e| KeyError::Options(e.to_string()))?;
        let origin = origin_for(&options.public_key.rp_id, origin)?;
        let credential = self.assert(&origin, options)?;
        serde_json::to_string(&credential).map_err(|e| KeyError::Options(e.to_string()))
    }

    /// Registers a new credential for the daemon's creation options.
    fn register(
        &mut self,
        origin: &Url,
        options: CreationChallengeResponse,
    ) -> Result<RegisterPublicKeyCredential, KeyError>;
    /// Signs an assertion for the daemon's request options.
    fn assert(
        &mut self,
        origin: &Url,
        options: RequestChallengeResponse,
    ) -> Result<PublicKeyCredential, KeyError>;
}

/// A software token persisted in a file (created on first use, mode 0600).
pub struct SoftTokenKey {
    path: PathBuf,
    token: SoftToken,
}

impl SoftTokenKey {
    /// Opens the token in `path`, or creates a new one there.
    pub fn open_or_create(path: &Path) -> Result<Self, KeyError> {
        let err = |detail: String| KeyError::SoftToken {
            path: path.to_path_buf(),
            detail,
        };
        let token = if path.exists() {
            let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            SoftToken::from_cbor(&bytes).map_err(|e| err(format!("not a soft token: {e:?}")))?
        } else {
            // It claims user verification: a soft token stands in for a key with a PIN.
            SoftToken::new(true).map_err(|e| err(format!("{e:?}")))?.0
        };
        let key = Self {
            path: path.to_path_buf(),
            token,
        };
        key.save()?;
        Ok(key)
    }

    /// Writes the token (its counter moved) atomically: temp file 0600, fsync, rename.
    fn save(&self) -> Result<(), KeyError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let err = |detail: String| KeyError::SoftToken {
            path: self.path.clone(),
            detail,
        };
        let bytes = self.token.to_cbor().map_err(|e| err(format!("{e:?}")))?;
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err(e.to_string()))?;
        file.write_all(&bytes).map_err(|e| err(e.to_string()))?;
        file.sync_all().map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| err(e.to_string()))
    }
}

impl Authenticator for SoftTokenKey {
    fn register(
        &mut self,
        origin: &Url,
        options: CreationChallengeResponse,
    ) -> Result<RegisterPublicKeyCredential, KeyError> {
        let response = self
            .token
            .do_registration(origin.clone(), options)
            .map_err(|e| KeyError::Device(format!("{e:?}")))?;
        self.save()?;
        Ok(response)
    }

    fn assert(
        &mut self,
        origin: &Url,
        options: RequestChallengeResponse,
    ) -> Result<PublicKeyCredential, KeyError> {
        let response = self
            .token
            .do_authentication(origin.clone(), options)
            .map_err(|e| {
                KeyError::Device(format!(
                    "the soft token {} could not sign ({e:?}): it holds none of the keys enrolled \
                     for this operator? Check --soft-token and --operator (`latchkey operator \
                     show NAME` lists their keys)",
                    self.path.display()
                ))
            })?;
        self.save()?;
        Ok(response)
    }
}

/// A FIDO2 security key over USB HID.
pub struct UsbKey {
    device: ctap_hid_fido2::FidoKeyHid,
    pin: Option<String>,
}

/// Plugged-in FIDO2 keys, as `index: product (path)` lines.
pub fn usb_devices() -> Vec<String> {
    ctap_hid_fido2::get_fidokey_devices()
        .iter()
        .enumerate()
        .map(|(i, d)| format!("{i}: {} ({})", d.product_string, d.info))
        .collect()
}

impl UsbKey {
    /// Opens the only plugged-in key, or number `index` when several are.
    pub fn open(index: Option<usize>) -> Result<Self, KeyError> {
        let mut devices = ctap_hid_fido2::get_fidokey_devices();
        let device = match (index, devices.len()) {
            (_, 0) => return Err(KeyError::NoKey),
            (None, 1) => devices.remove(0),
            (None, n) => return Err(KeyError::SeveralKeys(n)),
            (Some(i), n) if i < n => devices.remove(i),
            (Some(i), _) => return Err(KeyError::NoSuchDevice(i)),
        };
        let cfg = ctap_hid_fido2::LibCfg::init().with_keep_alive_msg_to_stderr(true);
        let device = ctap_hid_fido2::FidoKeyHidFactory::create_by_params(&[device.param], &cfg)
            .map_err(|e| KeyError::Device(e.to_string()))?;
        Ok(Self { device, pin: None })
    }

    fn pin_if(&mut self, required: bool) -> Result<Option<String>, KeyError> {
        if !required {
            return Ok(None);
        }
        if self.pin.is_none() {
            let pin = match std::env::var("LATCHKEY_PIN") {
                Ok(pin) => pin,
                Err(_) => rpassword::prompt_password("PIN for your security key: ")
                    .map_err(|e| KeyError::Device(format!("reading the PIN: {e}")))?,
            };
            self.pin = Some(pin);
        }
        Ok(self.pin.clone())
    }
}

fn client_data(kind: &str, challenge: &[u8], origin: &Url) -> Vec<u8> {
    serde_json::json!({
        "type": kind,
        "challenge": B64URL.encode(challenge),
        "origin": origin.origin().ascii_serialization(),
        "crossOrigin": false,
    })
    .to_string()
    .into_bytes()
}

fn device_error(e: impl std::fmt::Display) -> KeyError {
    let text = e.to_string();
    if text.contains("0x2F") || text.to_ascii_lowercase().contains("timeout") {
        KeyError::Device(format!("the key was not touched in time ({text})"))
    } else if text.contains("0x31") {
        KeyError::Device(format!("wrong PIN ({text})"))
    } else {
        KeyError::Device(text)
    }
}

impl Authenticator for UsbKey {
    fn register(
        &mut self,
        origin: &Url,
        options: CreationChallengeResponse,
    ) -> Result<RegisterPublicKeyCredential, KeyError> {
        let o = options.public_key;
        let uv = o
            .authenticator_selection
            .as_ref()
            .is_some_and(|s| s.user_verification == UserVerificationPolicy::Required);
        let pin = self.pin_if(uv)?;
        let cdj = client_data("webauthn.create", o.challenge.as_ref(), origin);
        let user =
            ctap_hid_fido2::public_key_credential_user_entity::PublicKeyCredentialUserEntity::new(
                Some(o.user.id.as_ref()),
                Some(&o.user.name),
                Some(&o.user.display_name),
            );
        // ctap-hid-fido2 hashes the bytes it is given as `challenge` into clientDataHash: pass the
        // whole clientDataJSON so the signature verifies as a standard WebAuthn response.
        let mut builder = ctap_hid_fido2::fidokey::MakeCredentialArgsBuilder::new(&o.rp.id, &cdj)
            .user_entity(&user);
        for excluded in o.exclude_credentials.iter().flatten() {
            builder = builder.exclude_authenticator(excluded.id.as_ref());
        }
        builder = match pin.as_deref() {
            Some(pin) => builder.pin(pin),
            None => builder.without_pin_and_uv(),
        };
        eprintln!("Touch your security key to enroll it...");
        let att = self
            .device
            .make_credential_with_args(&builder.build())
            .map_err(device_error)?;

        use serde_cbor_2::Value;
        let mut stmt = std::collections::BTreeMap::new();
        if att.fmt != "none" {
            stmt.insert(
                Value::Text("alg".into()),
                Value::Integer(att.attstmt_alg.into()),
            );
            stmt.insert(
                Value::Text("sig".into()),
                Value::Bytes(att.attstmt_sig.clone()),
            );
            if !att.attstmt_x5c.is_empty() {
                stmt.insert(
                    Value::Text("x5c".into()),
                    Value::Array(att.attstmt_x5c.iter().cloned().map(Value::Bytes).collect()),
                );
            }
        }
        let mut object = std::collections::BTreeMap::new();
        object.insert(Value::Text("fmt".into()), Value::Text(att.fmt.clone()));
        object.insert(Value::Text("attStmt".into()), Value::Map(stmt));
        object.insert(
            Value::Text("authData".into()),
            Value::Bytes(att.auth_data.clone()),
        );
        let attestation_object = serde_cbor_2::to_vec(&Value::Map(object))
            .map_err(|e| KeyError::Device(format!("encoding attestation: {e}")))?;
        let id = B64URL.encode(&att.credential_descriptor.id);
        let json = serde_json::json!({
            "id": id,
            "rawId": id,
            "response": {
                "attestationObject": B64URL.encode(attestation_object),
                "clientDataJSON": B64URL.encode(&cdj),
            },
            "type": "public-key",
            "extensions": {},
        });
        serde_json::from_value(json).map_err(|e| KeyError::Options(e.to_string()))
    }

    fn assert(
        &mut self,
        origin: &Url,
        options: RequestChallengeResponse,
    ) -> Result<PublicKeyCredential, KeyError> {
        let o = options.public_key;
        let pin = self.pin_if(o.user_verification == UserVerificationPolicy::Required)?;
        let cdj = client_data("webauthn.get", o.challenge.as_ref(), origin);
        let mut builder = ctap_hid_fido2::fidokey::GetAssertionArgsBuilder::new(&o.rp_id, &cdj);
        for allowed in &o.allow_credentials {
            builder = builder.add_credential_id(allowed.id.as_ref());
        }
        builder = match pin.as_deref() {
            Some(pin) => builder.pin(pin),
            None => builder.without_pin_and_uv(),
        };
        eprintln!("Touch your security key to approve...");
        let assertion = self
            .device
            .get_assertion_with_args(&builder.build())
            .map_err(device_error)?
            .into_iter()
            .next()
            .ok_or_else(|| KeyError::Device("the key returned no assertion".to_owned()))?;
        let id = B64URL.encode(&assertion.credential_id);
        let json = serde_json::json!({
            "id": id,
            "rawId": id,
            "response": {
                "authenticatorData": B64URL.encode(&assertion.auth_data),
                "clientDataJSON": B64URL.encode(&cdj),
                "signature": B64URL.encode(&assertion.signature),
                "userHandle": null,
            },
            "type": "public-key",
            "extensions": {},
        });
        serde_json::from_value(json).map_err(|e| KeyError::Options(e.to_string()))
    }
}
