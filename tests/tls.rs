//! TLS to the services tokenledger connects to, against real endpoints on loopback with a
//! certificate authority made by the test: PostgreSQL with `ssl = on` (every connection the
//! project makes goes through `infra::database`), the broker behind a TLS terminator, and
//! Alertmanager behind one.

use std::time::Duration;

use e2e::tls::{TestCa, TlsPostgres};
use infra::database::{connect, DatabaseSettings};
use infra::Secret;

async fn connect_to(url: &str) -> Result<tokio_postgres::Client, String> {
    let url = Secret::from(url);
    connect(&DatabaseSettings {
        url: &url,
        pool_size: 1,
        timeout: Duration::from_secs(10),
        application_name: "tokenledger-tls-test",
        session_setup: None,
    })
    .await
    .map_err(|error| error.to_string())
}

async fn assert_encrypted(client: &tokio_postgres::Client) {
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    assert!(row.get::<_, bool>(0), "the session is not encrypted");
}

#[tokio::test]
async fn postgres_sslmodes_do_what_libpq_says() {
    let ca = TestCa::new("postgres");
    let server = ca.issue("server", "localhost", &["localhost"]);
    let pg = TlsPostgres::start(&ca, &server).await;
    let ca_pem = ca.ca_pem().display().to_string();
    let port = pg.port;

    // verify-full, both forms of the connection string.
    for url in [
        format!("host=localhost port={port} user=postgres sslmode=verify-full sslrootcert='{ca_pem}'"),
        format!("postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca_pem}"),
    ] {
        let client = connect_to(&url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_encrypted(&client).await;
    }

    // A CA that did not sign the server's certificate.
    let other = TestCa::new("other");
    let error = connect_to(&format!(
        "host=localhost port={port} user=postgres sslmode=verify-full sslrootcert={}",
        other.ca_pem().display()
    ))
    .await
    .expect_err("a wrong CA must be refused");
    assert!(error.contains("UnknownIssuer"), "{error}");

    // The right CA, the wrong host name: the certificate names localhost, not 127.0.0.1.
    let by_address =
        format!("host=127.0.0.1 port={port} user=postgres sslrootcert={ca_pem} sslmode=");
    let error = connect_to(&format!("{by_address}verify-full"))
        .await
        .expect_err("a wrong host name must be refused");
    assert!(
        error.contains("not valid for name \"127.0.0.1\""),
        "{error}"
    );
    // verify-ca checks the chain only, as in libpq.
    let client = connect_to(&format!("{by_address}verify-ca"))
        .await
        .expect("verify-ca ignores the name");
    assert_encrypted(&client).await;
    // require with a CA file checks the chain too (libpq), so a wrong CA fails there as well.
    let error = connect_to(&format!(
        "host=127.0.0.1 port={port} user=postgres sslmode=require sslrootcert={}",
        other.ca_pem().display()
    ))
    .await
    .expect_err("require with a CA file verifies the chain");
    assert!(error.contains("UnknownIssuer"), "{error}");
    // require alone: encrypted, not authenticated.
    let client = connect_to(&format!(
        "host=127.0.0.1 port={port} user=postgres sslmode=require"
    ))
    .await
    .expect("require connects");
    assert_encrypted(&client).await;
    // verify-full without any CA is refused before connecting, naming the fix.
    let error = connect_to(&format!(
        "host=localhost port={port} user=postgres sslmode=verify-full"
    ))
    .await
    .expect_err("verify-full without a CA");
    assert!(error.contains("sslrootcert"), "{error}");
    // disable: plaintext, which this server's pg_hba.conf rejects.
    let error = connect_to(&format!(
        "host=localhost port={port} user=postgres sslmode=disable"
    ))
    .await
    .expect_err("plaintext rejected by the server");
    assert!(error.contains("no encryption"), "{error}");

    // A client certificate for a role that must present one.
    let client_cert = ca.issue("certuser", "certuser", &[]);
    let with_cert = format!(
        "postgres://certuser@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca_pem}&sslcert={}&sslkey={}",
        client_cert.cert.display(),
        client_cert.key.display()
    );
    let client = connect_to(&with_cert)
        .await
        .expect("client certificate accepted");
    assert_encrypted(&client).await;
    let error = connect_to(&format!(
        "host=localhost port={port} user=certuser sslmode=verify-full sslrootcert={ca_pem}"
    ))
    .await
    .expect_err("no client certificate");
    assert!(error.contains("certificate"), "{error}");
}

#[tokio::test]
async fn postgres_require_never_falls_back_to_plaintext() {
    let plain = TlsPostgres::start_plain().await;
    let plain_url = format!("host=127.0.0.1 port={} user=postgres", plain.port);
    let error = connect_to(&format!("{} sslmode=require", plain_url))
        .await
        .expect_err("require against a server without TLS");
    assert!(error.contains("does not support TLS"), "{error}");
    let ca = TestCa::new("plain");
    let error = connect_to(&format!(
        "{} sslmode=verify-full sslrootcert={}",
        plain_url,
        ca.ca_pem().display()
    ))
    .await
    .expect_err("verify-full against a server without TLS");
    assert!(error.contains("does not support TLS"), "{error}");
    // prefer falls back, as libpq's does.
    connect_to(&format!("{} sslmode=prefer", plain_url))
        .await
        .expect("prefer connects in plaintext");
}
