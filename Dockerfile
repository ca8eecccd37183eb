# callmeter: multi-stage release build.
#   docker build -t callmeter .
#   docker run --rm -v $PWD/my.toml:/etc/callmeter/callmeter.toml:ro -p 8080:8080 callmeter
# The build stage needs a C toolchain and make for the bundled librdkafka (the Rust image
# has them). Dependencies are built in their own layer, so that changing the sources does
# not rebuild them.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src src
COPY schemas schemas
COPY examples examples
# New mtimes, so that cargo rebuilds the crate itself over the placeholder.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin callmeter \
    && strip target/release/callmeter

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/callmeter /usr/local/bin/callmeter
COPY examples /etc/callmeter/examples
# An unprivileged user; the process writes nothing to disk.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["callmeter"]
CMD ["run", "--config", "/etc/callmeter/callmeter.toml"]
