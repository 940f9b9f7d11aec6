# ---- build ------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first, against an empty crate, so this layer is reused until Cargo.toml or
# Cargo.lock change. chatd-bench needs the `bench` feature, so cargo neither looks for its
# sources nor compiles its dependencies here.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin chatd \
    && rm -rf src

# The real sources. migrations/ is compiled in with include_str!, so it must be here too.
# build.rs labels chat_build_info with the git revision: .git is not in the build context, so
# it is "unknown" unless given, e.g.
# `docker build --build-arg CHATD_GIT_REVISION=$(git rev-parse --short HEAD) .`
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
ARG CHATD_GIT_REVISION=
# COPY keeps the files' old modification times: touch them so cargo rebuilds the crate
# instead of keeping the empty one from the dependency layer.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin chatd \
    && cp target/release/chatd /usr/local/bin/chatd

# ---- run --------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates for outbound TLS later (MongoDB); curl for the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --system --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin chatd \
    && mkdir -p /data \
    && chown chatd:chatd /data

COPY --from=builder /usr/local/bin/chatd /usr/local/bin/chatd

ENV DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8080
VOLUME ["/data"]
EXPOSE 8080
USER chatd

HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT:-8080}/health" > /dev/null || exit 1

# chatd is PID 1 and handles SIGTERM itself: it closes sockets with 1001 and drains the
# outbox for up to SHUTDOWN_TIMEOUT.
ENTRYPOINT ["chatd"]
CMD ["serve"]
