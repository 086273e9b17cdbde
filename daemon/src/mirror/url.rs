//! The `postgres_url` as teams paste it: libpq's URL with `sslmode`, `sslrootcert` and
//! `application_name`, the password from the URL, `PGPASSWORD` or `~/.pgpass`.
//! tokio-postgres refuses the parameters it does not know, so they are taken out here.

use std::path::PathBuf;

use super::MirrorError;

/// libpq's `sslmode`, as far as the mirror honours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// `allow` and `prefer`: no TLS (the server's choice is not worth a second attempt on
    /// loopback, and a remote database should say `require` or stricter).
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The URL split into what tokio-postgres takes and what the mirror handles itself.
#[derive(Debug)]
pub struct Parsed {
    /// The URL without the parameters tokio-postgres refuses.
    pub url: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
}

/// Splits the URL's query parameters.
pub fn split(url: &str) -> Result<Parsed, MirrorError> {
    let bad = |reason: String| MirrorError::Config(reason);
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut sslmode = SslMode::Prefer;
    let mut sslrootcert = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                sslmode = match v {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(bad(format!(
                            "postgres_url: sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                        )));
                    }
                };
            }
            "sslrootcert" => sslrootcert = Some(PathBuf::from(v)),
            // PgBouncer's hint for other drivers; nothing outlives a transaction here anyway.
            "pgbouncer" => {}
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(Parsed {
        url,
        sslmode,
        sslrootcert,
    })
}

/// The connection settings, with the password from `PGPASSWORD` or the pgpass file
/// (`PGPASSFILE`, else `~/.pgpass`) when the URL has none.
pub fn parse(url: &str) -> Result<tokio_postgres::Config, MirrorError> {
    let parsed = split(url)?;
    let mut config: tokio_postgres::Config = parsed.url.parse().map_err(|e| {
        MirrorError::Config(format!(
            "postgres_url {} cannot be read: {e}",
            crate::config::redact_url(url)
        ))
    })?;
    if config.get_application_name().is_none() {
        config.application_name("kqd");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    config.keepalives_idle(std::time::Duration::from_secs(30));
    if config.get_password().is_none() {
        if let Ok(p) = std::env::var("PGPASSWORD") {
            config.password(p);
        } else if let Some(p) = pgpass(&config) {
            config.password(p);
        }
    }
    Ok(config)
}

/// The password the pgpass file gives for the connection's host, port, database and user.
fn pgpass(config: &tokio_postgres::Config) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(_)) | None => "localhost".to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default()
        .to_string();
    let user = config.get_user().unwrap_or_default().to_string();
    let want = [host, port, db, user];
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .find_map(|line| {
            let fields = pgpass_fields(line);
            if fields.len() != 5 {
                return None;
            }
            let all = fields[..4]
                .iter()
                .zip(&want)
                .all(|(f, w)| f == "*" || f == w);
            all.then(|| fields[4].clone())
        })
}

/// A pgpass line's fields: `:` separates, `\` escapes.
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_are_taken_out_and_the_rest_is_kept() {
        let p = split("postgres://kq@db:5432/kq?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x&pgbouncer=true").unwrap();
        assert_eq!(p.url, "postgres://kq@db:5432/kq?application_name=x");
        assert_eq!(p.sslmode, SslMode::VerifyFull);
        assert_eq!(p.sslrootcert, Some(PathBuf::from("/ca.pem")));
        assert!(split("postgres://h/db?sslmode=sometimes").is_err());
        assert_eq!(
            pgpass_fields(r"h:5432:*:u:pa\:ss"),
            ["h", "5432", "*", "u", "pa:ss"]
        );
    }
}

/// The TLS connector the URL's `sslmode` asks for (`None`: plain TCP). `require` encrypts
/// without checking the certificate, as libpq does without a root certificate;
/// `verify-ca` checks the chain against the system's roots and `sslrootcert`;
/// `verify-full` checks the host name too.
pub fn tls(url: &str) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, MirrorError> {
    use rustls::pki_types::pem::PemObject;
    let parsed = split(url)?;
    let verify = match parsed.sslmode {
        SslMode::Disable | SslMode::Prefer => return Ok(None),
        SslMode::Require if parsed.sslrootcert.is_none() => None,
        SslMode::Require | SslMode::VerifyCa => Some(false),
        SslMode::VerifyFull => Some(true),
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &parsed.sslrootcert {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| MirrorError::Config(format!("sslrootcert {}: {e}", path.display())))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| MirrorError::Config(format!("sslrootcert {}: {e}", path.display())))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| MirrorError::Config(format!("TLS: {e}")))?;
    let config = match verify {
        Some(true) => builder.with_root_certificates(roots).with_no_client_auth(),
        Some(false) | None => {
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider.clone(),
            )
            .build()
            .ok();
            builder
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(Lenient {
                    chain: if verify.is_some() { webpki } else { None },
                    provider,
                }))
                .with_no_client_auth()
        }
    };
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

/// libpq's `require` (no check) and `verify-ca` (the chain, not the name).
#[derive(Debug)]
struct Lenient {
    chain: Option<std::sync::Arc<rustls::client::WebPkiServerVerifier>>,
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
