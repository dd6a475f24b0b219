#!/usr/bin/env python3
"""Pushes COUNT distinct OCI images into a plain-HTTP registry, fast
(kept-alive connections, parallel pushers, shared layers mounted, not sent
again), for the operator's throughput benchmark
(operator/bench/backup-throughput.sh).

Each image: SHARED layers of SHARED_SIZE bytes common to all images, OWN
layers of OWN_SIZE bytes of its own (all random), its own config (naming
every diff_id) and an OCI manifest, in repository PREFIX/appN under tag
v1. Prints one line per image: `repository tag digest`.

    push-images.py REGISTRY PREFIX COUNT SHARED SHARED_SIZE OWN OWN_SIZE [WORKERS]
"""
import concurrent.futures
import hashlib
import http.client
import json
import os
import socket
import sys
import threading


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    def __init__(self, host: str):
        self.host = host
        self.connection = http.client.HTTPConnection(host, timeout=60)
        self.connection.connect()
        # Headers and body go out in two writes: without this, Nagle and the
        # server's delayed ACK add 40 ms to every request.
        self.connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, method, path, body=None, headers=None, expect=(200, 201, 202)):
        self.connection.request(method, path, body=body, headers=headers or {})
        response = self.connection.getresponse()
        response.read()
        if response.status not in expect:
            raise SystemExit(f"{method} {path}: HTTP {response.status}")
        return response

    def mount_blob(self, repository: str, digest: str, source: str):
        """Links a blob another repository holds (one request, no bytes)."""
        self.request(
            "POST", f"/v2/{repository}/blobs/uploads/?mount={digest}&from={source}", body=b"",
            expect=(201,),
        )

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = digest_of(data)
        head = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", expect=(200, 404))
        if head.status == 200:
            return digest
        started = self.request("POST", f"/v2/{repository}/blobs/uploads/", body=b"")
        location = started.getheader("Location")
        if location.startswith("http"):
            location = "/" + location.split("/", 3)[3]
        separator = "&" if "?" in location else "?"
        self.request(
            "PUT",
            f"{location}{separator}digest={digest}",
            body=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return digest

    def push_manifest(self, repository: str, tag: str, manifest: bytes, media: str):
        self.request(
            "PUT",
            f"/v2/{repository}/manifests/{tag}",
            body=manifest,
            headers={"Content-Type": media},
        )


def push_image(target: Registry, prefix: str, i: int, shared: list, own: int, own_size: int) -> str:
    """Pushes image i (the shared layers already in PREFIX/app0 unless i is 0); its line."""
    repository = f"{prefix}/app{i}"
    layers = []
    for blob in shared:
        if i == 0:
            layers.append((target.push_blob(repository, blob), len(blob)))
        else:
            digest = digest_of(blob)
            target.mount_blob(repository, digest, f"{prefix}/app0")
            layers.append((digest, len(blob)))
    for _ in range(own):
        blob = os.urandom(own_size)
        layers.append((target.push_blob(repository, blob), len(blob)))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest for digest, _ in layers]},
            "config": {},
        },
        separators=(",", ":"),
    ).encode()
    config_digest = target.push_blob(repository, config)
    # Layers are stored uncompressed (media type without +gzip): the
    # registry does not care, and their diff_id is their digest.
    layer_media = "application/vnd.oci.image.layer.v1.tar"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {"mediaType": layer_media, "digest": digest, "size": size}
                for digest, size in layers
            ],
        },
        separators=(",", ":"),
    ).encode()
    target.push_manifest(repository, "v1", manifest, "application/vnd.oci.image.manifest.v1+json")
    return f"{repository} v1 {digest_of(manifest)}"


def main():
    registry, prefix = sys.argv[1:3]
    count, shared, shared_size, own, own_size = (int(a) for a in sys.argv[3:8])
    workers = int(sys.argv[8]) if len(sys.argv) > 8 else 8
    shared_blobs = [os.urandom(shared_size) for _ in range(shared)]
    # The registry spends ~20 ms on each write: pushers work in parallel,
    # each on its own connection, after image 0 put the shared layers in.
    lines = [push_image(Registry(registry), prefix, 0, shared_blobs, own, own_size)]
    local = threading.local()

    def one(i: int) -> str:
        if not hasattr(local, "registry"):
            local.registry = Registry(registry)
        return push_image(local.registry, prefix, i, shared_blobs, own, own_size)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        lines.extend(pool.map(one, range(1, count)))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
