# podsftp-webhook: one static binary on an empty base, non-root (it needs no privilege at all).
# Same image as `images/build` writes without Docker:  docker build -f images/webhook.Dockerfile .
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --target x86_64-unknown-linux-gnu -p podsftp-webhook \
 && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/podsftp-webhook /rootfs/usr/local/bin/podsftp-webhook \
 && install -D -m 0644 images/rootfs/etc/passwd /rootfs/etc/passwd \
 && install -D -m 0644 images/rootfs/etc/group /rootfs/etc/group \
 && install -d -m 1777 /rootfs/tmp

FROM scratch
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="podsftp-webhook" \
      org.opencontainers.image.description="Admission webhook and per-owner Secret/Service controller of podsftp" \
      org.opencontainers.image.source="https://github.com/podsftp/podsftp" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/podsftp-webhook"]
CMD ["serve"]
