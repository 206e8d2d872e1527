//! TLS to the services tokenledger connects to, against real endpoints on loopback with a
//! certificate authority made by the test: PostgreSQL with `ssl = on` (every connection the
//! project makes goes through `infra::database`), the broker behind a TLS terminator, and
//! Alertmanager behind one.

use std::time::Duration;

use e2e::tls::{Stunnel, TestCa, TlsPostgres};
use e2e::usage::{http_client, Gateway, Processor, DLQ_TOPIC, USAGE_TOPIC};
use e2e::{free_port, wait_for, wait_for_some, Binary, Broker, ChildProcess, Database};
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
        statement_timeout: None,
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

/// The status `/readyz` answers once the gateway listens (it may log a broker error first).
async fn readiness(gateway_url: &str) -> u16 {
    let url = format!("{gateway_url}/readyz");
    wait_for_some(Duration::from_secs(30), || async {
        let response = http_client().get(&url).send().await.ok()?;
        Some(response.status().as_u16())
    })
    .await
    .unwrap_or_else(|| panic!("{url} never answered"))
}

/// tansu speaking plaintext behind stunnel, advertising stunnel's port, so every connection
/// after the bootstrap is TLS too.
struct TlsBroker {
    _broker: Broker,
    tunnel: Stunnel,
    bootstrap: String,
}

impl TlsBroker {
    async fn start(ca: &TestCa) -> TlsBroker {
        let server = ca.issue("broker", "localhost", &["localhost", "127.0.0.1"]);
        let tls_port = free_port();
        let broker = Broker::start_advertising(tls_port).await;
        let tunnel = Stunnel::start_on(tls_port, &server, broker.port()).await;
        TlsBroker {
            _broker: broker,
            tunnel,
            bootstrap: format!("127.0.0.1:{tls_port}"),
        }
    }
}

/// `security.protocol=SSL` trusting `ca`, for rdkafka clients of the test itself.
fn tls_client(bootstrap: &str, ca: &TestCa) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", ca.ca_pem().display().to_string());
    config
}

async fn create_topics(bootstrap: &str, ca: &TestCa) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        tls_client(bootstrap, ca).create().expect("admin client");
    let topics = [
        NewTopic::new(USAGE_TOPIC, 1, TopicReplication::Fixed(1)),
        NewTopic::new(DLQ_TOPIC, 1, TopicReplication::Fixed(1)),
    ];
    let results = admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("CreateTopics over TLS");
    for result in results {
        result.expect("topic created");
    }
}

/// The `[kafka.properties]` of both binaries for a TLS broker whose CA is `ca_pem`.
fn kafka_tls_toml(ca_pem: &std::path::Path) -> String {
    format!(
        "[kafka.properties]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{}\"\n",
        ca_pem.display()
    )
}

#[tokio::test]
async fn usage_flows_through_a_tls_broker_and_a_wrong_ca_is_refused() {
    let ca = TestCa::new("kafka");
    let (tls_broker, db) = tokio::join!(TlsBroker::start(&ca), Database::start());
    let (bootstrap, tunnel) = (tls_broker.bootstrap.clone(), &tls_broker.tunnel);
    create_topics(&bootstrap, &ca).await;
    let db_url = db.url();
    let mut migrate = ChildProcess::spawn(
        "processor-migrate",
        Binary::path("processor"),
        &["migrate"],
        &[("TOKENLEDGER_DATABASE__URL", db_url.as_str())],
    );
    let status = migrate.wait_exit(Duration::from_secs(60)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        migrate.log_tail()
    );

    let config = kafka_tls_toml(&ca.ca_pem());
    let gateway = Gateway::start("gateway-tls", &bootstrap, &config, &[], true).await;
    let config_dir = tempfile::tempdir().expect("tempdir");
    let processor_toml = config_dir.path().join("processor.toml");
    std::fs::write(&processor_toml, &config).expect("processor config");
    let processor_toml = processor_toml.display().to_string();
    let mut processor = Processor::spawn(
        "processor-tls",
        &bootstrap,
        &db_url,
        &[("TOKENLEDGER_CONFIG", processor_toml.as_str())],
    );

    let events: Vec<serde_json::Value> = (0..20)
        .map(|i| {
            serde_json::json!({
                "tenant_id": format!("tenant-{}", i % 3), "provider": "openai", "model": "gpt-4o",
                "prompt_tokens": 100 + i, "completion_tokens": 10,
            })
        })
        .collect();
    let response = http_client()
        .post(format!("{}/v1/usage", gateway.url))
        .json(&events)
        .send()
        .await
        .expect("POST /v1/usage");
    let status = response.status();
    assert_eq!(status, 202, "{}", response.text().await.unwrap_or_default());
    let client = db.client().await;
    let stored = wait_for(Duration::from_secs(60), || async {
        client
            .query_one("SELECT count(*) FROM gateway_mode_audit", &[])
            .await
            .map(|row| row.get::<_, i64>(0) == 20)
            .unwrap_or(false)
    })
    .await;
    if !stored {
        processor.process.assert_running();
        panic!(
            "the 20 events did not land; processor log:\n{}\nstunnel log:\n{}",
            processor.process.log_tail(),
            tunnel.log()
        );
    }

    // A gateway trusting another CA: librdkafka refuses the broker's certificate, says so, and
    // the gateway is not ready.
    let other = TestCa::new("not-the-broker's");
    let mut refused = Gateway::start(
        "gateway-wrong-ca",
        &bootstrap,
        &kafka_tls_toml(&other.ca_pem()),
        &[],
        false,
    )
    .await;
    refused
        .process
        .wait_for_log("certificate verify failed", Duration::from_secs(30))
        .await;
    assert_eq!(readiness(&refused.url).await, 503);
    refused.process.assert_running();
}

/// No broker here authenticates with SASL: tansu answers every mechanism of SaslHandshake with
/// "unsupported" unless started with `--authentication`, whose users can only be created through
/// an admin API rdkafka does not offer. What can be tested is tested: SCRAM over TLS is accepted
/// by the configuration and librdkafka, the password comes from a file and is never printed
/// (configuration or logs), librdkafka's SASL error reaches the log, and the gateway is not
/// ready.
#[tokio::test]
async fn sasl_over_tls_takes_its_password_from_a_file_and_never_prints_it() {
    const PASSWORD: &str = "kafka-pw-Zq81x";
    let ca = TestCa::new("sasl");
    let tls_broker = TlsBroker::start(&ca).await;
    let password_file = ca.dir().join("kafka_password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("password file");
    let config = format!(
        "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\
         \"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"tokenledger\"\n\
         \"sasl.password_file\" = \"{}\"\n\"ssl.ca.location\" = \"{}\"\n",
        password_file.display(),
        ca.ca_pem().display()
    );
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config_path = config_dir.path().join("gateway.toml");
    std::fs::write(&config_path, &config).expect("config");
    let printed = std::process::Command::new(Binary::path("gateway"))
        .arg("--config")
        .arg(&config_path)
        .arg("--print-config")
        .env("TOKENLEDGER_AUTH__ENABLED", "false")
        .output()
        .expect("gateway --print-config");
    let stdout = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "\"sasl.password\" = \"<read from file {}>\"",
            password_file.display()
        )),
        "{stdout}"
    );
    assert!(!stdout.contains(PASSWORD), "{stdout}");

    let mut gateway =
        Gateway::start("gateway-sasl", &tls_broker.bootstrap, &config, &[], false).await;
    let line = gateway
        .process
        .wait_for_log(
            "SASL SCRAM-SHA-512 mechanism handshake failed",
            Duration::from_secs(30),
        )
        .await;
    assert!(line.contains("Unsupported SASL mechanism"), "{line}");
    assert_eq!(readiness(&gateway.url).await, 503);
    gateway.process.assert_running();
    let log = gateway.process.log_contents();
    assert!(!log.contains(PASSWORD), "the password reached the log");

    // A missing password file stops startup, naming it.
    std::fs::remove_file(&password_file).expect("remove");
    let refused = std::process::Command::new(Binary::path("gateway"))
        .arg("--config")
        .arg(&config_path)
        .env("TOKENLEDGER_AUTH__ENABLED", "false")
        .output()
        .expect("gateway");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot read the secret file {}",
            password_file.display()
        )),
        "{stderr}"
    );
}
