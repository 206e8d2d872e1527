#!/usr/bin/env bash
# Creates the read-only role Grafana's TimescaleDB datasource logs in with
# (grafana/provisioning/datasources). docker-compose.yml mounts this file into
# /docker-entrypoint-initdb.d, so it runs once, when the database volume is initialised; for an
# existing volume run the same statements by hand (docs/deployment.md).
#
# The tables do not exist yet at this point (`processor migrate` creates them later, as
# $POSTGRES_USER): default privileges make every table and view that role creates in schema public
# readable, the continuous aggregates included.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=reader="$GRAFANA_DB_USER" --set=password="$GRAFANA_DB_PASSWORD" \
  --set=owner="$POSTGRES_USER" --set=db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"reader" LOGIN PASSWORD :'password';
-- Dashboards only read, and a runaway panel query must not hold the database.
ALTER ROLE :"reader" SET default_transaction_read_only = on;
ALTER ROLE :"reader" SET statement_timeout = '30s';
GRANT CONNECT ON DATABASE :"db" TO :"reader";
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
SQL
