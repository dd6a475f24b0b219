#!/usr/bin/env python3
"""Registers (or removes) Node objects no kubelet runs, as a simulated large
cluster for operator/bench/many-nodes.sh.

Each node is created, then its status is written through the status
subresource as a kubelet writes it: Ready, an InternalIP, capacity, and
`status.images` capped at 50 entries (the kubelet's default
nodeStatusMaxImages), each entry a digest-pinned name and a tag. The nodes
named by --holders list IMAGE among their 50. A Lease in kube-node-lease
keeps the node lifecycle controller from marking them NotReady while the
benchmark runs (`renew` renews them). Every node carries the label
lifeboat.dev/fake-node=true and the taint lifeboat.dev/fake-node:NoSchedule,
so nothing real schedules there; `delete` removes exactly those.

  fake-nodes.py create --count N --image REF --holders 1,2,3
  fake-nodes.py renew
  fake-nodes.py delete
"""

import argparse
import base64
import concurrent.futures
import datetime
import hashlib
import os
import sys
import tempfile

import requests
import yaml

LABEL = "lifeboat.dev/fake-node"
PREFIX = "lb-fake-"
WORKERS = 16
MAX_IMAGES = 50


def session_from_kubeconfig(path):
    with open(path) as f:
        config = yaml.safe_load(f)
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    tmp = tempfile.mkdtemp()

    def write(name, data):
        file = os.path.join(tmp, name)
        with open(file, "wb") as out:
            out.write(base64.b64decode(data))
        return file

    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE would replace the cluster CA
    s.cert = (write("crt", user["client-certificate-data"]), write("key", user["client-key-data"]))
    s.verify = write("ca", cluster["certificate-authority-data"])
    adapter = requests.adapters.HTTPAdapter(pool_connections=WORKERS, pool_maxsize=WORKERS)
    s.mount("https://", adapter)
    return s, cluster["server"]


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def filler(node, i):
    digest = hashlib.sha256(f"{node}/{i}".encode()).hexdigest()
    repo = f"registry.example/fleet/app-{i % 400}"
    return {"names": [f"{repo}@sha256:{digest}", f"{repo}:v{i}"], "sizeBytes": 10_000_000 + i}


def node_objects(index, image, holders):
    name = f"{PREFIX}{index:05d}"
    images = [filler(name, index * MAX_IMAGES + i) for i in range(MAX_IMAGES)]
    if index in holders:
        repo = image.split("@")[0]
        images[index % MAX_IMAGES] = {"names": [image, f"{repo}:bench"], "sizeBytes": 104_857_600}
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {LABEL: "true", "kubernetes.io/hostname": name}},
        "spec": {"taints": [{"key": LABEL, "value": "true", "effect": "NoSchedule"}]},
    }
    status = {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "simulated",
                    "lastHeartbeatTime": now()[:19] + "Z",
                    "lastTransitionTime": now()[:19] + "Z",
                }
            ],
            "addresses": [{"type": "InternalIP", "address": f"10.250.{index // 250}.{index % 250 + 1}"}],
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "images": images,
        }
    }
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now()},
    }
    return name, node, status, lease


def check(response, ok=(200, 201)):
    if response.status_code not in ok:
        raise RuntimeError(f"{response.request.method} {response.url}: {response.status_code} {response.text[:300]}")


def create_one(s, server, index, image, holders):
    name, node, status, lease = node_objects(index, image, holders)
    check(s.post(f"{server}/api/v1/nodes", json=node), (201, 409))
    check(
        s.patch(
            f"{server}/api/v1/nodes/{name}/status",
            json=status,
            headers={"Content-Type": "application/merge-patch+json"},
        )
    )
    check(s.post(f"{server}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", json=lease), (201, 409))


def fake_names(s, server):
    names, token = [], None
    while True:
        params = {"labelSelector": f"{LABEL}=true", "limit": 500}
        if token:
            params["continue"] = token
        r = s.get(f"{server}/api/v1/nodes", params=params)
        check(r)
        body = r.json()
        names += [n["metadata"]["name"] for n in body["items"]]
        token = body["metadata"].get("continue")
        if not token:
            return names


def renew_one(s, server, name):
    patch = {"spec": {"renewTime": now()}}
    check(
        s.patch(
            f"{server}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}",
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        ),
        (200, 404),
    )


def delete_one(s, server, name):
    check(s.delete(f"{server}/api/v1/nodes/{name}"), (200, 404))
    check(s.delete(f"{server}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"), (200, 404))


def run_all(fn, items):
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["create", "renew", "delete"])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--image", default="")
    parser.add_argument("--holders", default="")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG_ADMIN", ""))
    args = parser.parse_args()
    s, server = session_from_kubeconfig(args.kubeconfig)
    if args.action == "create":
        holders = {int(h) for h in args.holders.split(",") if h}
        run_all(lambda i: create_one(s, server, i, args.image, holders), range(args.count))
        for h in sorted(holders):
            print(f"{PREFIX}{h:05d}")
    elif args.action == "renew":
        run_all(lambda n: renew_one(s, server, n), fake_names(s, server))
    else:
        names = fake_names(s, server)
        run_all(lambda n: delete_one(s, server, n), names)
        print(f"deleted {len(names)} nodes", file=sys.stderr)


if __name__ == "__main__":
    main()
