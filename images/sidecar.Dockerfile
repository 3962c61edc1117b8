# podsftp-sidecar: one static binary on an empty base, non-root by default.
# Same image as `images/build` writes without Docker:  docker build -f images/sidecar.Dockerfile .
# The webhook runs it as the app's uid ("mirror") or as root with a per-session worker that drops
# to the app's uid ("switch"), through the pod's securityContext; the image default stays 65532.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --target x86_64-unknown-linux-gnu -p podsftp-sidecar \
 && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/podsftp-sidecar /rootfs/usr/local/bin/podsftp-sidecar \
 && install -D -m 0644 images/rootfs/etc/passwd /rootfs/etc/passwd \
 && install -D -m 0644 images/rootfs/etc/group /rootfs/etc/group \
 && install -d -m 1777 /rootfs/tmp

FROM scratch
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="podsftp-sidecar" \
      org.opencontainers.image.description="SFTP server serving another container's filesystem through /proc/<pid>/root" \
      org.opencontainers.image.source="https://github.com/podsftp/podsftp" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/podsftp-sidecar"]
CMD ["serve"]
