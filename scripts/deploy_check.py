"""Consistency and schema checks over rendered manifests (called by scripts/deploy-check)."""
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

out, bin_dir, k8s_version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
results = []


def check(name, ok, detail=""):
    results.append((name, bool(ok), detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail and not ok else ""))


def find(docs, kind, name):
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


for overlay in ["local", "gke"]:
    docs = [d for d in yaml.safe_load_all((out / f"{overlay}.yaml").read_text()) if d]
    check(f"{overlay}: kustomize renders", len(docs) > 10, f"{len(docs)} resources")

    # Schema: core Kubernetes kinds only (CRDs such as KEDA's have no schema there).
    core = [d for d in docs if "/" not in d["apiVersion"] or d["apiVersion"].split("/")[0].endswith("k8s.io")
            or d["apiVersion"].split("/")[0] in ("apps", "batch", "policy", "autoscaling")]
    core_file = out / f"{overlay}-core.yaml"
    core_file.write_text(yaml.safe_dump_all(core))
    r = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict",
                        "--kubernetes-version", k8s_version, str(core_file)], capture_output=True, text=True)
    check(f"{overlay}: {len(core)} core resources validate against Kubernetes {k8s_version}",
          r.returncode == 0, (r.stdout + r.stderr)[-2000:])

    check(f"{overlay}: no Secret is inlined", not [d for d in docs if d["kind"] == "Secret"])

    cm = find(docs, "ConfigMap", next(d["metadata"]["name"] for d in docs
                                      if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("leafsync-config")))
    toml_text = cm["data"]["leafsync.toml"]
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(toml_text)
    loaded = {}
    for binary, args in [("leafsync-worker", ["--config", f.name, "print-config"]),
                         ("leafsync-api", ["--config", f.name, "--print-config"])]:
        r = subprocess.run([str(bin_dir / binary), *args], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin"})
        check(f"{overlay}: ConfigMap loads with {binary}'s own config loader", r.returncode == 0, r.stderr)
        if r.returncode == 0:
            loaded = tomllib.loads(r.stdout)
    if not loaded:
        continue
    topics = sorted(loaded["types"][t]["topic"] for t in ("potato", "tomato", "pepper"))
    group = loaded["kafka"]["group_id"]
    admin_port = int(loaded["worker"]["admin_addr"].rsplit(":", 1)[1])
    api_port = int(loaded["api"]["bind"].rsplit(":", 1)[1])

    worker = find(docs, "Deployment", "leafsync-worker")
    api = find(docs, "Deployment", "leafsync-api")
    for dep, port, paths in [(worker, admin_port, {"/live", "/ready"}), (api, api_port, {"/live", "/ready"})]:
        c = dep["spec"]["template"]["spec"]["containers"][0]
        named = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in c:
                g = c[probe]["httpGet"]
                p = named.get(g["port"], g["port"])
                check(f"{overlay}: {dep['metadata']['name']} {probe} {g['path']} on the served port",
                      g["path"] in paths and p == port, f"{g} vs port {port}")
        ann = dep["spec"]["template"]["metadata"].get("annotations", {})
        check(f"{overlay}: {dep['metadata']['name']} scrape port is the served port",
              int(ann.get("prometheus.io/port", port)) == port)
        sc = c["securityContext"]
        check(f"{overlay}: {dep['metadata']['name']} runs non-root, read-only, no capabilities",
              sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
              and sc["capabilities"]["drop"] == ["ALL"]
              and dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
              and dep["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault")
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    check(f"{overlay}: worker grace period ({grace}s) exceeds worker.drain_timeout_ms",
          grace * 1000 > loaded["worker"]["drain_timeout_ms"])
    env = {e["name"]: e for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    check(f"{overlay}: worker instance id comes from the pod name (static membership)",
          env["LEAFSYNC__WORKER__INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name")
    check(f"{overlay}: Mongo URI comes from a Secret", "secretKeyRef" in env["LEAFSYNC__MONGO__URI"]["valueFrom"])

    job = find(docs, "Job", "leafsync-topics")
    jenv = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    partitions = int(jenv["PARTITIONS"]) * len(topics)
    check(f"{overlay}: topics job creates the configured topics and dead-letter topic",
          all(t in job["spec"]["template"]["spec"]["containers"][0]["args"][0] for t in topics + [loaded["kafka"]["dead_letter_topic"]]))

    so = find(docs, "ScaledObject", "leafsync-worker")
    if overlay == "gke":
        check("gke: ScaledObject present", so is not None)
    if so:
        check(f"{overlay}: ScaledObject targets the worker Deployment",
              so["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
              and so["metadata"]["namespace"] == worker["metadata"]["namespace"])
        trig = so["spec"]["triggers"]
        check(f"{overlay}: one lag trigger over all image topics", len(trig) == 1 and trig[0]["type"] == "apache-kafka")
        m = trig[0]["metadata"]
        check(f"{overlay}: ScaledObject topics equal the worker's", sorted(m["topic"].split(",")) == topics,
              f"{m['topic']} vs {topics}")
        check(f"{overlay}: ScaledObject group equals the worker's", m["consumerGroup"] == group)
        check(f"{overlay}: ScaledObject bootstrap equals the worker's",
              m["bootstrapServers"] == loaded["kafka"]["bootstrap_servers"])
        check(f"{overlay}: maxReplicaCount ({so['spec']['maxReplicaCount']}) ≤ partitions ({partitions})",
              so["spec"]["maxReplicaCount"] <= partitions)
        check(f"{overlay}: scale-down is stabilized",
              so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60)
        check(f"{overlay}: TriggerAuthentication exists", find(docs, "TriggerAuthentication",
                                                             trig[0]["authenticationRef"]["name"]) is not None)
    if overlay == "gke":
        ing = find(docs, "Ingress", "leafsync-api")
        paths = ing["spec"]["rules"][0]["http"]["paths"]
        check("gke: Ingress routes /image-plant to the API service",
              paths[0]["path"] == "/image-plant" and paths[0]["backend"]["service"]["name"] == "leafsync-api")
        bc = find(docs, "BackendConfig", "leafsync-api")
        check("gke: load balancer health check on /ready", bc["spec"]["healthCheck"]["requestPath"] == "/ready"
              and bc["spec"]["healthCheck"]["port"] == api_port)

# The dashboard only queries metrics the binaries define.
import json
import re
dash = json.loads(Path("deploy/grafana/leafsync-dashboard.json").read_text())
sources = Path("worker/src/metrics.rs").read_text() + Path("api/src/metrics.rs").read_text()
for p in dash["panels"]:
    for t in p["targets"]:
        for metric in re.findall(r"leafsync_[a-z0-9_]+", t["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            check(f"dashboard: {metric} is exported", f'"{base}"' in sources)

passed = sum(1 for _, ok, _ in results if ok)
failed = len(results) - passed
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
