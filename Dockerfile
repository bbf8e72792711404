# roomcast: one static musl binary in a FROM scratch image.
#
# From source (needs a registry for the rust builder image):
#
#     docker build -t roomcast:latest .
#
# Without a registry, build the binary on the host and wrap it in the same final stage
# (deploy/Dockerfile.host, a context folder holding only the binary):
#
#     cargo build --release --locked --target x86_64-unknown-linux-musl
#     deploy/image-from-binary target/x86_64-unknown-linux-musl/release/roomcast roomcast:latest
#
# The final stage below and deploy/Dockerfile.host must stay the same; tests/containers.rs
# checks that they do. .dockerignore keeps target/ and .git out of the build context.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
# musl-tools gives musl-gcc, for any dependency that compiles C.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# The release profile (LTO, opt-level 3, stripped); .cargo/config.toml adds +crt-static.
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin roomcast \
 && install -D -m 0755 target/x86_64-unknown-linux-musl/release/roomcast /out/roomcast

# ---- final stage: keep identical to deploy/Dockerfile.host (except the COPY source) ----
FROM scratch
COPY --from=builder /out/roomcast /roomcast
LABEL org.opencontainers.image.title="roomcast" \
      org.opencontainers.image.description="WebSocket chat server: one static binary"
# Numeric, so no /etc/passwd is needed; nothing in the image is writable by this user.
USER 65532:65532
EXPOSE 8000
STOPSIGNAL SIGTERM
# Exec form: the image has no shell. The probe reads ROOMCAST_ADDR for the port.
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s --retries=3 CMD ["/roomcast", "probe"]
ENTRYPOINT ["/roomcast"]
CMD ["serve"]
