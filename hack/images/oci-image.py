#!/usr/bin/env python3
"""Builds OCI images into an OCI image layout directory, without a container engine.

Lifeboat's tests and demo need real images: runnable ones (busybox-static plus
random, incompressible layers), shared base layers, multi-platform indexes, and
images of Lifeboat's own binaries. This tool writes them as plain OCI layouts
that `skopeo copy oci:DIR:REF docker://...` pushes and `ctr images import`
loads. Everything is deterministic (mtime 0, sorted entries) except the random
layers, which take a seed so shared layers come out byte-identical.

Usage:
  oci-image.py image --layout DIR --ref NAME [--platform os/arch]
      [--busybox] [--file SRC:DEST[:MODE]] [--binary SRC:DEST] [--random-layer BYTES:SEED]...
      [--compression gzip|none] [--entrypoint JSON] [--cmd JSON] [--env K=V]...
  oci-image.py index --layout DIR --ref NAME --manifests REF,REF,...
  oci-image.py archive --layout DIR --out FILE.tar   (tar of the layout, for ctr import)
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
# containerd's `ctr images import` names images after this annotation.
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
CHUNK = 1 << 20


class HashingWriter:
    """A file-like sink that hashes and counts what passes through it."""

    def __init__(self, sink):
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        if self.sink is not None:
            self.sink.write(data)
        return len(data)

    def flush(self):
        if self.sink is not None:
            self.sink.flush()


class RandomReader:
    """Deterministic incompressible bytes from a seed, streamed (never all in memory)."""

    def __init__(self, size, seed):
        self.remaining = size
        self.rng = random.Random(seed)

    def read(self, n=-1):
        if n is None or n < 0 or n > self.remaining:
            n = self.remaining
        n = min(n, CHUNK)
        self.remaining -= n
        return self.rng.randbytes(n)


class Layout:
    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        index_path = os.path.join(path, "index.json")
        if os.path.exists(index_path):
            with open(index_path) as f:
                self.index = json.load(f)
        else:
            self.index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}

    def blob_path(self, digest):
        return os.path.join(self.path, "blobs", "sha256", digest.split(":", 1)[1])

    def put_bytes(self, data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not os.path.exists(path):
            with open(path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)
        return digest, len(data)

    def put_stream(self, produce):
        """produce(writer) writes the blob; returns (digest, size)."""
        tmp = os.path.join(self.path, "blobs", "sha256", f".partial-{os.getpid()}")
        with open(tmp, "wb") as f:
            writer = HashingWriter(f)
            produce(writer)
        digest = "sha256:" + writer.sha.hexdigest()
        os.replace(tmp, self.blob_path(digest))
        return digest, writer.size

    def read_json(self, digest):
        with open(self.blob_path(digest), "rb") as f:
            return f.read()

    def tag(self, ref, descriptor):
        self.index["manifests"] = [
            m for m in self.index["manifests"] if m.get("annotations", {}).get(REF_ANNOTATION) != ref
        ]
        descriptor = dict(descriptor)
        descriptor["annotations"] = {REF_ANNOTATION: ref, CONTAINERD_NAME_ANNOTATION: ref}
        self.index["manifests"].append(descriptor)
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump(self.index, f, indent=2)

    def lookup(self, ref):
        for m in self.index["manifests"]:
            if m.get("annotations", {}).get(REF_ANNOTATION) == ref:
                return m
        raise SystemExit(f"no image {ref!r} in layout {self.path}")


def tar_info(name, size=0, mode=0o644, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name.lstrip("/"))
    info.size = size
    info.mode = mode
    info.type = kind
    info.linkname = linkname
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def parent_dirs(paths):
    dirs = set()
    for p in paths:
        parts = p.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return sorted(dirs)


def shared_libraries(binary):
    """The shared objects a dynamically linked binary loads, from ldd."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0 or "not a dynamic executable" in out.stdout + out.stderr:
        return []
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" ")[0]
        else:
            target = line.split(" ")[0]
        if target.startswith("/"):
            libs.append(target)
    return libs


def build_layer(layout, entries, compression):
    """entries: list of (dest, kind, payload, mode) with kind in file|bytes|random|symlink."""
    names = [e[0] for e in entries]

    def write_tar(sink):
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for d in parent_dirs(names):
                tar.addfile(tar_info(d, kind=tarfile.DIRTYPE, mode=0o755))
            for dest, kind, payload, mode in sorted(entries, key=lambda e: e[0]):
                if kind == "symlink":
                    tar.addfile(tar_info(dest, kind=tarfile.SYMTYPE, linkname=payload, mode=0o777))
                elif kind == "file":
                    size = os.path.getsize(payload)
                    with open(payload, "rb") as f:
                        tar.addfile(tar_info(dest, size=size, mode=mode), f)
                elif kind == "bytes":
                    tar.addfile(tar_info(dest, size=len(payload), mode=mode), io.BytesIO(payload))
                elif kind == "random":
                    size, seed = payload
                    tar.addfile(tar_info(dest, size=size, mode=mode), RandomReader(size, seed))

    diff = {}

    def produce(sink):
        if compression == "gzip":
            # Random payloads do not compress: level 1 keeps the build fast.
            gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1, mtime=0)
            hashing = HashingWriter(gz)
            write_tar(hashing)
            gz.close()
        else:
            hashing = HashingWriter(sink)
            write_tar(hashing)
        diff["id"] = "sha256:" + hashing.sha.hexdigest()

    digest, size = layout.put_stream(produce)
    media = LAYER_GZIP if compression == "gzip" else LAYER_TAR
    return {"mediaType": media, "digest": digest, "size": size}, diff["id"]


def cmd_image(args):
    layout = Layout(args.layout)
    os_name, arch = args.platform.split("/", 1)
    layers, diff_ids = [], []

    def add(entries):
        desc, diff_id = build_layer(layout, entries, args.compression)
        layers.append(desc)
        diff_ids.append(diff_id)

    if args.busybox:
        busybox = "/bin/busybox"
        entries = [("bin/busybox", "file", busybox, 0o755)]
        for applet in ("sh", "sleep", "cat", "ls", "echo", "true", "wget", "env"):
            entries.append((f"bin/{applet}", "symlink", "busybox", 0o777))
        entries.append(("etc/passwd", "bytes", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n", 0o644))
        entries.append(("etc/group", "bytes", b"root:x:0:\nnobody:x:65534:\n", 0o644))
        add(entries)
    files = []
    for spec in args.file:
        parts = spec.split(":")
        files.append((parts[1], "file", parts[0], int(parts[2], 8) if len(parts) > 2 else 0o644))
    for spec in args.binary:
        src, dest = spec.split(":", 1)
        files.append((dest, "file", src, 0o755))
        for lib in shared_libraries(src):
            files.append((lib, "file", os.path.realpath(lib), 0o755))
    if files:
        seen, unique = set(), []
        for f in files:
            if f[0] not in seen:
                seen.add(f[0])
                unique.append(f)
        add(unique)
    for spec in args.random_layer:
        size, seed = spec.split(":", 1)
        add([(f"data/random-{seed}.bin", "random", (int(size), seed), 0o644)])

    config = {
        "architecture": arch,
        "os": os_name,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + args.env,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "lifeboat hack/images/oci-image.py"} for _ in diff_ids],
    }
    if args.entrypoint:
        config["config"]["Entrypoint"] = json.loads(args.entrypoint)
    if args.cmd:
        config["config"]["Cmd"] = json.loads(args.cmd)
    if args.user:
        config["config"]["User"] = args.user
    if args.created:
        config["created"] = args.created
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest, config_size = layout.put_bytes(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": layers,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    digest, size = layout.put_bytes(manifest_bytes)
    layout.tag(args.ref, {"mediaType": OCI_MANIFEST, "digest": digest, "size": size,
                          "platform": {"os": os_name, "architecture": arch}})
    print(digest)


def cmd_index(args):
    layout = Layout(args.layout)
    manifests = []
    for ref in args.manifests.split(","):
        m = dict(layout.lookup(ref))
        m.pop("annotations", None)
        manifests.append(m)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    data = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    digest, size = layout.put_bytes(data)
    layout.tag(args.ref, {"mediaType": OCI_INDEX, "digest": digest, "size": size})
    print(digest)


def cmd_archive(args):
    with tarfile.open(args.out, "w", format=tarfile.PAX_FORMAT) as tar:
        for root, _dirs, files in os.walk(args.layout):
            for name in sorted(files):
                if name.startswith(".partial"):
                    continue
                full = os.path.join(root, name)
                tar.add(full, arcname=os.path.relpath(full, args.layout), recursive=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    image = sub.add_parser("image")
    image.add_argument("--layout", required=True)
    image.add_argument("--ref", required=True)
    image.add_argument("--platform", default="linux/amd64")
    image.add_argument("--busybox", action="store_true")
    image.add_argument("--file", action="append", default=[])
    image.add_argument("--binary", action="append", default=[])
    image.add_argument("--random-layer", action="append", default=[])
    image.add_argument("--compression", choices=["gzip", "none"], default="gzip")
    image.add_argument("--entrypoint")
    image.add_argument("--cmd")
    image.add_argument("--user")
    image.add_argument("--env", action="append", default=[])
    image.add_argument("--created", help="RFC 3339 creation time for the config (none by default)")
    image.set_defaults(func=cmd_image)
    index = sub.add_parser("index")
    index.add_argument("--layout", required=True)
    index.add_argument("--ref", required=True)
    index.add_argument("--manifests", required=True)
    index.set_defaults(func=cmd_index)
    archive = sub.add_parser("archive")
    archive.add_argument("--layout", required=True)
    archive.add_argument("--out", required=True)
    archive.set_defaults(func=cmd_archive)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
