# syntax=docker/dockerfile:1
# paybridge's one image: the single binary `paybridge` (serve, gateway, migrate), run as a
# non-root user on a slim runtime. Build: docker build -t paybridge:0.1.0 .
#
# Stage 1 builds with the Rust toolchain (protoc comes vendored through the build
# dependencies, so nothing else is installed). Cargo.lock is honoured (--locked).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin paybridge \
    && install -D -m 0755 target/release/paybridge /out/paybridge \
    && mkdir -p /out/data

# Stage 2: glibc matches the build stage (both Debian bookworm). The binary needs no shell, no
# CA bundle (TLS roots are compiled in) and no writable root filesystem; SQLite lives in /data.
FROM debian:bookworm-slim
COPY --from=build /out/paybridge /usr/local/bin/paybridge
# SQLite's default home when the image runs without the chart (docker run): writable by the user.
COPY --from=build --chown=65532:65532 /out/data /data
# The chart's user (65532, "nonroot" by convention); numeric so Kubernetes can check runAsNonRoot.
USER 65532:65532
WORKDIR /data
EXPOSE 50051 8080 9090 9091
ENTRYPOINT ["/usr/local/bin/paybridge"]
CMD ["serve"]
