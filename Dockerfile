# Colloquy container image: a static-ish release binary on a slim Debian, run as non-root.
#   docker build -t colloquy .
#   docker run -e DATABASE_URL=... -e JWT_SECRET=... -p 8080:8080 colloquy
# Queries are checked at run time (no `query!` macros), so the build needs no database.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir -p src bench/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > bench/src/main.rs \
 && cargo build --release --locked -p colloquy \
 && rm -rf src bench/src
COPY migrations migrations
COPY src src
COPY bench/src bench/src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked -p colloquy

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin colloquy
COPY --from=build /src/target/release/colloquy /usr/local/bin/colloquy
USER 10001:10001
ENV COLLOQUY_LISTEN=0.0.0.0:8080 \
    LOG_FORMAT=json \
    RUST_LOG=info
EXPOSE 8080
# Liveness of the process; readiness (database reachable, migrated) is GET /readyz.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
  CMD ["colloquy", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["colloquy"]
CMD ["serve"]
