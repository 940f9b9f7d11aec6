# syntax=docker/dockerfile:1.7
# BuildKit (the default builder since Docker 23) is needed for the cache mounts below.

# ---- build ------------------------------------------------------------------
FROM rust:1.89.0-bookworm AS builder
WORKDIR /src

# migrations/ is compiled in with include_str!, so it must be here too.
COPY Cargo.toml Cargo.lock ./
# build.rs labels chat_build_info with the git revision: .git is not in the build context, so
# it is "unknown" unless given, e.g.
# `docker build --build-arg CHATD_GIT_REVISION=$(git rev-parse --short HEAD) .`
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
ARG CHATD_GIT_REVISION=
# The registry and target/ are cache mounts: a rebuild after a source change compiles chatd
# alone, without a dependency layer to keep in step with Cargo.toml. The binary ships
# stripped (about a sixth of its size with debug info); its debug info stays in this stage,
# as /usr/local/bin/chatd.debug, for whoever needs to symbolize a core dump.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin chatd \
    && objcopy --only-keep-debug target/release/chatd /usr/local/bin/chatd.debug \
    && objcopy --strip-all --add-gnu-debuglink=/usr/local/bin/chatd.debug \
        target/release/chatd /usr/local/bin/chatd

# ---- run --------------------------------------------------------------------
FROM debian:12.12-slim

# ca-certificates for outbound TLS (MongoDB, a JWKS URL). Nothing else: the health check is
# chatd's own.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A numeric user, so that a runtime that forbids root (runAsNonRoot) can tell it is not root.
RUN groupadd --system --gid 10001 chatd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin chatd \
    && mkdir -p /data \
    && chown 10001:10001 /data

COPY --from=builder /usr/local/bin/chatd /usr/local/bin/chatd

ENV DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8080
VOLUME ["/data"]
EXPOSE 8080
USER 10001:10001

# `chatd health` asks this container's chatd on PORT, over HTTPS when TLS_CERT is set.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["chatd", "health", "--timeout", "2s"]

# chatd is PID 1 and handles SIGTERM itself: it closes sockets with 1001 and drains the
# outbox for up to SHUTDOWN_TIMEOUT.
ENTRYPOINT ["chatd"]
CMD ["serve"]
