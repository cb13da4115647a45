# syntax=docker/dockerfile:1
#
# The two test images the end-to-end scenario needs on a real cluster
# (tests/cluster-e2e.sh). On the test control plane the pod runner maps these
# roles to programs of the machine instead, so CI never builds them.
#
#   app:    the Movies app (tests/src/bin/movieapp.rs). It takes http-echo's
#           flags (-listen=:PORT -text=SERVICE@NAMESPACE), so it replaces
#           hashicorp/http-echo in deploy/examples unchanged, and answers with
#           what it saw (service, protocol, baggage), calls further services
#           (/call/HOST:PORT/PATH) and serves the gRPC Catalog.
#   client: curl, Python grpcio and tests/python/grpc_client.py with the
#           protos it compiles, for the client pod (it runs `sleep`).
#   ingress: nginx and tests/src/bin/ingress-standin.rs, the ingress
#           controller stand-in (tests/fixtures/ingress-standin.yaml).
#
# Build from the repository root:
#   docker build -f tests/e2e.Dockerfile --target app    -t divert-e2e-app:0.1.0 .
#   docker build -f tests/e2e.Dockerfile --target client -t divert-e2e-client:0.1.0 .
#   docker build -f tests/e2e.Dockerfile --target ingress -t divert-e2e-ingress:0.1.0 .
#
# Not built on the development machines (they have no container engine): keep
# it correct by review, like deploy/Dockerfile.

ARG RUST_VERSION=1.95
ARG DEBIAN_VERSION=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_VERSION} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p divert-tests --bin movieapp --bin ingress-standin \
 && install -D -m 0755 target/release/movieapp /out/movieapp \
 && install -D -m 0755 target/release/ingress-standin /out/ingress-standin

FROM debian:${DEBIAN_VERSION}-slim AS app
COPY --from=build /out/movieapp /usr/local/bin/movieapp
# The examples' securityContext runs it as a non-root user of their choosing.
USER 65532:65532
ENTRYPOINT ["movieapp"]

FROM python:3.13-slim-${DEBIAN_VERSION} AS client
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/*
COPY tests/python/requirements.txt /e2e/tests/python/requirements.txt
RUN pip install --no-cache-dir -r /e2e/tests/python/requirements.txt
# grpc_client.py finds the protos at ../../proto/proto from itself; the
# scenario runs it at this path (IMAGE_GRPC_CLIENT in tests/src/backend.rs).
COPY tests/python/ /e2e/tests/python/
COPY proto/proto/ /e2e/proto/proto/
CMD ["sleep", "infinity"]

FROM debian:${DEBIAN_VERSION}-slim AS ingress
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ingress-standin /usr/local/bin/ingress-standin
ENTRYPOINT ["ingress-standin"]
