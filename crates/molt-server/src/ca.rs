//! The device CA: it signs device certificates (CN = device id) and the
//! server's own TLS certificate. It is an online key by design; the TUF
//! root, targets and image keys never come here (FLEET.md, principle 5).

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use sha2::{Digest, Sha256};

use crate::Error;

/// File names in the data directory.
pub const CA_CERT: &str = "device-ca.pem";
/// The CA's private key (mode 0600).
pub const CA_KEY: &str = "device-ca.key";
/// The server's TLS certificate (broker and HTTPS), signed by the CA.
pub const SERVER_CERT: &str = "server.pem";
/// The server's TLS key.
pub const SERVER_KEY: &str = "server.key";

/// The CA, loaded.
pub struct DeviceCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

/// A signed device certificate.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// SHA-256 of the public key (hex): a CSR is accepted once per key.
    pub key_fingerprint: String,
    /// Certificate serial (hex).
    pub serial: String,
}

fn cert_err(e: impl std::fmt::Display) -> Error {
    Error::Cert(e.to_string())
}

fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("restricting {}", path.display()), e))?;
    }
    Ok(())
}

impl DeviceCa {
    /// Creates the CA and the server certificate in `dir` (refuses to
    /// overwrite an existing CA).
    pub fn create(dir: &Path, server_names: &[String]) -> Result<DeviceCa, Error> {
        let ca_key_path = dir.join(CA_KEY);
        if ca_key_path.exists() {
            return Err(Error::Config(format!(
                "{} exists; refusing to replace the device CA",
                ca_key_path.display()
            )));
        }
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "molt device CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(365 * 20);
        let cert = params.self_signed(&key).map_err(cert_err)?;
        let cert_pem = cert.pem();
        write_private(&ca_key_path, &key.serialize_pem())?;
        std::fs::write(dir.join(CA_CERT), &cert_pem).map_err(|e| Error::io("writing the CA certificate", e))?;
        let ca = DeviceCa {
            issuer: Issuer::new(params, key),
            cert_pem,
        };
        ca.write_server_cert(dir, server_names)?;
        Ok(ca)
    }

    /// Loads the CA from `dir`.
    pub fn load(dir: &Path) -> Result<DeviceCa, Error> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| {
                Error::io(
                    format!("reading {} (run `molt server init`)", dir.join(name).display()),
                    e,
                )
            })
        };
        let cert_pem = read(CA_CERT)?;
        let key = KeyPair::from_pem(&read(CA_KEY)?).map_err(cert_err)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(cert_err)?;
        Ok(DeviceCa { issuer, cert_pem })
    }

    /// Writes a fresh server TLS certificate for `names` (DNS names or IP
    /// addresses), signed by this CA.
    pub fn write_server_cert(&self, dir: &Path, names: &[String]) -> Result<(), Error> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(cert_err)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "molt-server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(825);
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err)?;
        write_private(&dir.join(SERVER_KEY), &key.serialize_pem())?;
        std::fs::write(dir.join(SERVER_CERT), format!("{}{}", cert.pem(), self.cert_pem))
            .map_err(|e| Error::io("writing the server certificate", e))
    }

    /// Checks a CSR's signature and signs a client certificate for
    /// `device_id`: the subject is replaced by `CN = device_id`, whatever
    /// the CSR asked for, and only client authentication is allowed.
    pub fn sign_csr(&self, csr_pem: &str, device_id: &str, days: u32) -> Result<Signed, Error> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            Error::refused(
                "csr_invalid",
                format!("the CSR is not a valid signed PKCS#10 request: {e}"),
            )
        })?;
        let key_fingerprint = hex::encode(Sha256::digest(csr.public_key.der_bytes()));
        let mut serial = [0u8; 16];
        rand::fill(&mut serial);
        serial[0] &= 0x7f;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, device_id);
        params.subject_alt_names = Vec::<SanType>::new();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(serial.to_vec().into());
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(i64::from(days));
        csr.params = params;
        let cert = csr.signed_by(&self.issuer).map_err(cert_err)?;
        Ok(Signed {
            cert_pem: cert.pem(),
            key_fingerprint,
            serial: hex::encode(serial),
        })
    }

    /// Issues a key and certificate directly (tests and the load generator
    /// use it to make many devices without the HTTPS round trip).
    pub fn issue_device(&self, device_id: &str, days: u32) -> Result<(Signed, String), Error> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let csr = CertificateParams::new(Vec::<String>::new())
            .map_err(cert_err)?
            .serialize_request(&key)
            .map_err(cert_err)?
            .pem()
            .map_err(cert_err)?;
        Ok((self.sign_csr(&csr, device_id, days)?, key.serialize_pem()))
    }
}
