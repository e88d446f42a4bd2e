# hookgate container image: built from source, runs as non-root on a distroless base.
#   docker build -t hookgate .
#   docker run --rm -p 8443:8443 hookgate serve          # embedded dev defaults
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY src ./src
COPY config ./config
COPY tests ./tests
RUN cargo build --release --locked && strip target/release/hookgate

# glibc, CA certificates and a non-root user (uid 65532), nothing else: no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/hookgate /usr/local/bin/hookgate
USER nonroot:nonroot
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/hookgate"]
CMD ["serve", "--config", "/etc/hookgate/hookgate.toml", "--log-format", "json"]
