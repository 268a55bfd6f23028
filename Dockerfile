# syntax=docker/dockerfile:1.7
#
# One image for every role of the `pipes` binary (serve, scheduler, worker,
# migrate, demo-provider, admin commands). The role is the command:
#   docker run pipes:local serve
#
# Build stage: the cargo registry and the target directory live in BuildKit
# cache mounts, so a rebuild after a source change only recompiles our crates.
# A cache mount is not part of the image, hence the copy out of target/ inside
# the same RUN.
FROM rust:1-bookworm AS builder
WORKDIR /src
# Queries are checked at run time, and migrations are embedded from
# migrations/: the build never needs a database.
ENV SQLX_OFFLINE=true
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pipes \
    && install -D -m 0755 target/release/pipes /out/pipes

# Runtime stage: glibc to match the builder, CA roots for HTTPS calls to OAuth
# providers and webhook receivers, and nothing else.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pipes \
    && useradd --system --uid 10001 --gid pipes --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin pipes
COPY --from=builder /out/pipes /usr/local/bin/pipes
USER 10001:10001
ENV PIPES_LISTEN=0.0.0.0:8080 \
    PIPES_METRICS_LISTEN=0.0.0.0:9090 \
    PIPES_LOG_FORMAT=json
# 8080: `serve` API; 9090: `scheduler`/`worker` metrics and liveness;
# 8090: `demo-provider`.
EXPOSE 8080 9090 8090
# No HEALTHCHECK here: the port to probe depends on the role, so each service
# in docker-compose.yml declares its own.
ENTRYPOINT ["pipes"]
CMD ["serve"]
