# syntax=docker/dockerfile:1
#
# tokenledger's images: one build stage compiles both binaries, two final stages ship one each.
#
#   docker build --target gateway   -t tokenledger/gateway .
#   docker build --target processor -t tokenledger/processor .
#
# docker-compose.yml builds both. The build needs BuildKit (the default builder of current Docker)
# for its cache mounts: the cargo registry and the target directory survive between builds, so a
# source change recompiles only the workspace's own crates.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

# --- build ------------------------------------------------------------------------------------------
# The full (non-slim) image carries gcc, make, pkg-config and libssl-dev, which rdkafka's bundled
# librdkafka needs (it links the system OpenSSL for Kafka's SSL and SASL_SSL). Builder and runtime share the Debian release, so the binaries find the glibc they linked.
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The target directory is a cache mount, gone after this step: the binaries are copied out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --package gateway --package processor \
    && mkdir -p /out \
    && cp target/release/gateway target/release/processor /out/

# --- runtime base -----------------------------------------------------------------------------------
# No compiler, no shell tools beyond Debian's base; libssl3 for librdkafka's TLS, curl only for the
# container healthchecks.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# Versions are not pinned on purpose: a pinned Debian version disappears from the archive with
# the next security update and breaks the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tokenledger \
    && useradd --system --uid 10001 --gid tokenledger --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin tokenledger
# The log filter; override per container. (DL3064 mistakes the TOKEN in TOKENLEDGER_ for a secret.)
# hadolint ignore=DL3064
ENV TOKENLEDGER_LOG=info
USER 10001:10001
WORKDIR /

# --- gateway ------------------------------------------------------------------------------------------
FROM runtime AS gateway
COPY --from=build /out/gateway /usr/local/bin/gateway
# Inside a container the loopback defaults would be unreachable: listen on every interface.
# hadolint ignore=DL3064
ENV TOKENLEDGER_HTTP__LISTEN=0.0.0.0:8080 \
    TOKENLEDGER_HTTP__ADMIN_LISTEN=0.0.0.0:9464
# 8080: POST /v1/usage, /healthz, /readyz. 9464: /metrics, /healthz, /readyz.
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/gateway"]

# --- processor ----------------------------------------------------------------------------------------
# The sql/ migrations are compiled into the binary (processor/src/migrate.rs); nothing else to copy.
FROM runtime AS processor
COPY --from=build /out/processor /usr/local/bin/processor
# hadolint ignore=DL3064
ENV TOKENLEDGER_METRICS__LISTEN=0.0.0.0:8081
# 8081: /metrics.
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/processor"]
CMD ["run"]
