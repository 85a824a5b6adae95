# syntax=docker/dockerfile:1
# One image, three entrypoints (leafsync-worker, leafsync-api, leafsync-loadtest): they share
# every dependency, so one build and one image layer serve all three, and the deploy picks the
# binary with `command`. Build: docker build -t leafsync:dev .

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependency layer: manifests and stub sources only, so code changes don't rebuild the world.
COPY Cargo.toml Cargo.lock leafsync.example.toml ./
COPY core/Cargo.toml core/
COPY worker/Cargo.toml worker/
COPY api/Cargo.toml api/
COPY loadtest/Cargo.toml loadtest/
COPY testkit/Cargo.toml testkit/
RUN for c in core worker api loadtest testkit; do \
      mkdir -p $c/src && echo 'fn main() {}' > $c/src/main.rs && touch $c/src/lib.rs; \
    done \
 && cargo build --release --locked -p leafsync-worker -p leafsync-api -p leafsync-loadtest

COPY . .
RUN touch core/src/lib.rs worker/src/lib.rs api/src/lib.rs loadtest/src/lib.rs \
 && cargo build --release --locked -p leafsync-worker -p leafsync-api -p leafsync-loadtest

# Runtime: glibc + libssl only, no shell, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/leafsync-worker /src/target/release/leafsync-api \
     /src/target/release/leafsync-loadtest /usr/local/bin/
COPY --from=build /src/leafsync.example.toml /etc/leafsync/leafsync.example.toml
USER nonroot:nonroot
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/leafsync-worker"]
CMD ["run"]
