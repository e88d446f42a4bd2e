# syntax=docker/dockerfile:1
# hookgate container image: built from source, runs as non-root on a distroless base.
#
#   docker build -t hookgate .
#   docker run --rm -p 8443:8443 -p 127.0.0.1:9090:9090 -e HOOKGATE_ADMIN_TOKEN=change-me hookgate
#
# Without arguments it serves /etc/hookgate/hookgate.toml (HOOKGATE_CONFIG), which in
# this image is config/container.toml: the development demo (self-signed certificate,
# published demo secret, in-memory store) listening on all interfaces of the container.
# Mount your own file there for anything real; its ${VARIABLES} come from `-e`/`--env-file`.
#
# CI builds this stage without a container engine: `.ci/run` copies exactly the files
# the build stage COPYs into an empty directory and runs its `cargo build` there, and
# tests/it/packaging.rs keeps that list and this file in step.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY src ./src
COPY config ./config
COPY benches ./benches
COPY tests ./tests
# The registry and the target directory are BuildKit cache mounts: a rebuild after a
# source change compiles hookgate alone, not its dependencies. The binary is copied
# out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -s target/release/hookgate /out/hookgate

# glibc, CA certificates and a non-root user (uid 65532), nothing else: no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/hookgate /usr/local/bin/hookgate
COPY config/container.toml /etc/hookgate/hookgate.toml
# HOOKGATE_CONFIG is where `serve`, `check` and `deliveries` read their config;
# JSON log lines for the container runtime's log collector.
ENV HOOKGATE_CONFIG=/etc/hookgate/hookgate.toml \
    HOOKGATE_LOG_FORMAT=json
USER nonroot:nonroot
# 8443: webhooks (TLS); 9090: admin (/metrics, /healthz, /readyz, /deliveries).
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/hookgate"]
CMD ["serve"]
