# Builds the sse-notify binary and ships it on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations-lua ./migrations-lua
COPY static ./static
# The browser client the service serves (embedded at build time).
COPY clients/js ./clients/js
# bench/ is a workspace member: without it cargo refuses the workspace manifest.
COPY bench ./bench
RUN cargo build --release --locked --bin sse-notify

FROM debian:bookworm-slim
# The system's certificate authorities: what a rediss:// server is verified against by default.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 sse-notify
COPY --from=build /src/target/release/sse-notify /usr/local/bin/sse-notify
USER sse-notify
EXPOSE 8080
ENV LISTEN_ADDR=0.0.0.0:8080
ENTRYPOINT ["/usr/local/bin/sse-notify"]
