# syntax=docker/dockerfile:1
# One build, one image per binary. The build stage compiles all three once (they share most
# dependencies); each final stage carries only its own binary, so the API image holds no
# librdkafka. Build: docker build --target worker -t leafsync-worker:dev .
#                    docker build --target api -t leafsync-api:dev .
#                    docker build --target loadtest -t leafsync-loadtest:dev .

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependency layer: manifests and stub sources only, so code changes don't rebuild the world.
COPY Cargo.toml Cargo.lock leafsync.example.toml ./
COPY core/Cargo.toml core/
COPY kafka/Cargo.toml kafka/
COPY worker/Cargo.toml worker/
COPY api/Cargo.toml api/
COPY loadtest/Cargo.toml loadtest/
COPY testkit/Cargo.toml testkit/
RUN for c in core kafka worker api loadtest testkit; do \
      mkdir -p $c/src && echo 'fn main() {}' > $c/src/main.rs && touch $c/src/lib.rs; \
    done \
 && cargo build --release --locked -p leafsync-worker -p leafsync-api -p leafsync-loadtest

COPY . .
RUN touch core/src/lib.rs kafka/src/lib.rs worker/src/lib.rs api/src/lib.rs loadtest/src/lib.rs \
 && cargo build --release --locked -p leafsync-worker -p leafsync-api -p leafsync-loadtest

# The release profile keeps line tables (symbolized backtraces in development); the images get
# stripped binaries (~1/6 the size). The debug info stays in this stage, linked by
# .gnu_debuglink: `docker build --target build` and copy target/release/*.debug to symbolize a
# crash report.
RUN cd target/release && for b in leafsync-worker leafsync-api leafsync-loadtest; do \
      objcopy --only-keep-debug "$b" "$b.debug" \
      && strip --strip-debug --strip-unneeded "$b" \
      && objcopy --add-gnu-debuglink="$b.debug" "$b"; \
    done

# Runtimes: glibc + libssl only, no shell, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /src/leafsync.example.toml /etc/leafsync/leafsync.example.toml
USER nonroot:nonroot

FROM runtime AS api
COPY --from=build /src/target/release/leafsync-api /usr/local/bin/
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/leafsync-api"]

FROM runtime AS loadtest
COPY --from=build /src/target/release/leafsync-loadtest /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/leafsync-loadtest"]

# Last, so a plain `docker build .` gives the worker, as it always did.
FROM runtime AS worker
COPY --from=build /src/target/release/leafsync-worker /usr/local/bin/
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/leafsync-worker"]
CMD ["run"]
