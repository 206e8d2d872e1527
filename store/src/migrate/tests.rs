use super::*;

fn sql_dir() -> PathBuf {
    // the run-time value first: see tests/support's repo_root
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../sql")
}

#[test]
fn every_file_in_sql_is_embedded_and_identical() {
    let on_disk = from_dir(&sql_dir()).expect("sql/ parses");
    let embedded = embedded().expect("embedded list parses");
    let disk_names: Vec<&str> = on_disk.iter().map(|m| m.name.as_str()).collect();
    let embedded_names: Vec<&str> = embedded.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        disk_names, embedded_names,
        "add every sql/V*.sql file to migrate::EMBEDDED"
    );
    for (disk, built_in) in on_disk.iter().zip(&embedded) {
        assert_eq!(disk.checksum, built_in.checksum, "{}", disk.name);
    }
}

#[test]
fn versions_sort_numerically() {
    let migrations = sorted(vec![
        Migration::parse("V10__ten.sql", "SELECT 10;").expect("valid"),
        Migration::parse("V9__nine.sql", "SELECT 9;").expect("valid"),
        Migration::parse("V2__two.sql", "SELECT 2;").expect("valid"),
    ])
    .expect("distinct versions");
    let versions: Vec<i32> = migrations.iter().map(|m| m.version).collect();
    assert_eq!(versions, [2, 9, 10]);
}

#[test]
fn bad_names_and_duplicate_versions_are_rejected() {
    for name in [
        "V01__x.sql",
        "V1_x.sql",
        "v1__x.sql",
        "V__x.sql",
        "V1__.sql",
        "V1__x.txt",
    ] {
        assert!(Migration::parse(name, "").is_err(), "{name}");
    }
    let duplicate = sorted(vec![
        Migration::parse("V3__a.sql", "").expect("valid"),
        Migration::parse("V3__b.sql", "").expect("valid"),
    ]);
    assert!(matches!(
        duplicate,
        Err(MigrateError::DuplicateVersion { version: 3, .. })
    ));
}

#[test]
fn no_transaction_marker_is_honoured_and_statements_split_at_line_end() {
    let sql =
        "-- tokenledger:no-transaction\n-- comment\nCALL a(';x');\nSELECT 1\n  ;\n\n-- trailing\n";
    let migration = Migration::parse("V7__refresh.sql", sql).expect("valid");
    assert!(migration.no_transaction);
    let statements = migration.statements();
    assert_eq!(statements.len(), 2, "{statements:?}");
    assert!(statements[0].contains("CALL a(';x');"));
    assert!(statements[1].contains("SELECT 1"));

    let transactional = Migration::parse("V8__x.sql", "SELECT 1;\n").expect("valid");
    assert!(!transactional.no_transaction);
}

#[test]
fn the_apache_edition_skips_the_rollups_and_says_what_it_leaves_out() {
    let embedded = embedded().expect("embedded");
    let apache = Edition::from_license(Some("apache"));
    assert_eq!(apache, Edition::Apache);
    let skipped: Vec<&str> = embedded
        .iter()
        .filter(|m| apache.skips(m))
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(skipped, ["V2__rollups.sql", "V5__refresh_windows.sql"]);
    let community = Edition::from_license(Some("timescale"));
    assert!(embedded.iter().all(|m| !community.skips(m)));
    assert_eq!(
        Edition::from_license(None),
        Edition::Other(String::new()),
        "no TimescaleDB: nothing is skipped, the rollups fail with a message"
    );
    assert!(embedded
        .iter()
        .all(|m| !Edition::from_license(None).skips(m)));

    let rollups = embedded
        .iter()
        .find(|m| m.name == "V2__rollups.sql")
        .expect("V2");
    assert_eq!(
        rollups.community_features(),
        [
            "continuous aggregate usage_hourly",
            "continuous aggregate usage_daily",
            "continuous aggregate tenant_daily",
            "continuous aggregate model_daily",
            "4 refresh policies",
            "compression of raw audit chunks and its policy",
        ]
    );
}

#[test]
fn the_rollups_migration_is_recognised_as_needing_continuous_aggregates() {
    let embedded = embedded().expect("embedded");
    let needing: Vec<&str> = embedded
        .iter()
        .filter(|m| m.needs_continuous_aggregates())
        .map(|m| m.name.as_str())
        .collect();
    assert!(needing.contains(&"V2__rollups.sql"), "{needing:?}");
    assert!(
        needing.contains(&"V5__refresh_windows.sql"),
        "policies exist only with continuous aggregates: {needing:?}"
    );
    assert!(!needing.contains(&"V1__audit.sql"), "{needing:?}");
}
