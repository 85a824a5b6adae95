"""Consistency and schema checks over rendered manifests (called by scripts/deploy-check)."""
import re
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
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                      "PriorityClass", "StorageClass", "ClusterTriggerAuthentication"}
    homeless = [f'{d["kind"]}/{d["metadata"]["name"]}' for d in docs
                if d["kind"] not in cluster_scoped and not d["metadata"].get("namespace")]
    check(f"{overlay}: every namespaced object names its namespace", not homeless, ", ".join(homeless))

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
    api_pod = find(docs, "Deployment", "leafsync-api")["spec"]["template"]["spec"]
    api_grace = api_pod["terminationGracePeriodSeconds"]
    pre_stop = api_pod["containers"][0].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    check(f"{overlay}: the API keeps serving while the load balancer drops it (preStop sleep ≥ 10 s)",
          pre_stop >= 10, f"preStop sleep {pre_stop}s")
    check(f"{overlay}: API grace period ({api_grace}s) exceeds its preStop sleep plus api.request_timeout_ms",
          api_grace * 1000 > pre_stop * 1000 + loaded["api"]["request_timeout_ms"])
    # The replay runbook's variants of the CronJob's env (docs/operations.md, "Replay"), each through
    # the binary's own argument parser: clap counts an env value, even "false", as given, so a
    # variant that leaves two exclusive flags set fails before doing anything.
    replay = find(docs, "CronJob", "leafsync-replay")
    job_env = {e["name"]: e["value"] for e in replay["spec"]["jobTemplate"]["spec"]["template"]["spec"]
               ["containers"][0]["env"] if "value" in e}
    runbook = Path("docs/operations.md").read_text()
    variants = {"plan": ("", {}),
                "run": ("LEAFSYNC_REPLAY_DRY_RUN=false", {"LEAFSYNC_REPLAY_DRY_RUN": "false"}),
                "to a point in time": ("LEAFSYNC_REPLAY_TO_EARLIEST- LEAFSYNC_REPLAY_TO_DATETIME=2026-11-01T00:00:00Z",
                                       {"LEAFSYNC_REPLAY_DRY_RUN": "false", "LEAFSYNC_REPLAY_TO_EARLIEST": None,
                                        "LEAFSYNC_REPLAY_TO_DATETIME": "2026-11-01T00:00:00Z"})}
    for what, (command, change) in variants.items():
        env = {**job_env, **change}
        env = {k: v for k, v in env.items() if v is not None}
        # An unreachable broker: the run stops at its first Kafka call, after parsing.
        env.update({"PATH": "/usr/bin:/bin", "LEAFSYNC__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"})
        try:
            r = subprocess.run([str(bin_dir / "leafsync-worker"), "--config", f.name, "replay"], env=env,
                               capture_output=True, text=True, timeout=3)
            usage_error = r.returncode == 2 and "Usage:" in r.stderr
            detail = r.stderr.strip()[-300:]
        except subprocess.TimeoutExpired:
            usage_error, detail = False, ""
        check(f"{overlay}: replay runbook variant '{what}' is in the runbook and passes the binary's parser",
              command in runbook and not usage_error, detail or f"{command!r} not in docs/operations.md")
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    check(f"{overlay}: worker grace period ({grace}s) exceeds worker.drain_timeout_ms",
          grace * 1000 > loaded["worker"]["drain_timeout_ms"])
    env = {e["name"]: e for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    # Membership vs workload kind: a Deployment's pod names are random and change on every
    # reschedule, so a static `group.instance.id` from them buys nothing and costs a
    # session-timeout stall on every scale-in (KIP-345: static members send no LeaveGroup).
    static = "LEAFSYNC__WORKER__INSTANCE_ID" in env or "instance_id" in loaded["worker"]
    check(f"{overlay}: worker membership fits its workload kind (Deployment ⇒ dynamic membership)",
          worker["kind"] == "Deployment" and not static)
    check(f"{overlay}: Mongo URI comes from a Secret", "secretKeyRef" in env["LEAFSYNC__MONGO__URI"]["valueFrom"])

    # Autoscaled workloads carry no replica count: `kubectl apply` would reset the fleet to it.
    autoscaled = {h["spec"]["scaleTargetRef"]["name"] for h in docs if h["kind"] == "HorizontalPodAutoscaler"}
    autoscaled |= {so["spec"]["scaleTargetRef"]["name"] for so in docs if so["kind"] == "ScaledObject"}
    autoscaled.add("leafsync-worker")  # KEDA's in gke; scaled by hand (kubectl scale) in local
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] in autoscaled:
            check(f"{overlay}: {d['metadata']['name']} has no spec.replicas (its autoscaler owns it)",
                  "replicas" not in d["spec"])

    # Every image is pinned to a tag that docs/operations.md lists (and so says exists).
    ops = Path("docs/operations.md").read_text()
    images = set()
    for d in docs:
        spec = d.get("spec", {})
        pod = (spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
               or spec.get("template", {}).get("spec", {}))
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            images.add(c["image"])
    for image in sorted(images):
        name, _, tag = image.rpartition(":")
        pinned = bool(name) and "/" not in tag and tag not in ("", "latest")
        listed = f"`{image}`" in ops or (overlay == "local" and tag == "dev")
        check(f"{overlay}: image {image} is pinned and listed in docs/operations.md", pinned and listed)

    # The topics Job's replication fits the overlay's cluster.
    want_replication = {"local": (1, 1), "gke": (3, 2)}[overlay]

    job = find(docs, "Job", "leafsync-topics")
    jenv = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    got = (int(jenv["REPLICATION"]), int(jenv["MIN_INSYNC_REPLICAS"]))
    check(f"{overlay}: topics Job replication / min.insync.replicas {got} = {want_replication}",
          got == want_replication and got[1] <= got[0])
    check(f"{overlay}: topics Job takes Kafka credentials from the workers' Secret",
          "--command-config" in job["spec"]["template"]["spec"]["containers"][0]["args"][0]
          and any("secretKeyRef" in e.get("valueFrom", {})
                  for e in job["spec"]["template"]["spec"]["containers"][0]["env"]))
    partitions = int(jenv["PARTITIONS"]) * len(topics)
    check(f"{overlay}: topics job creates the configured topics and dead-letter topic",
          all(t in job["spec"]["template"]["spec"]["containers"][0]["args"][0] for t in topics + [loaded["kafka"]["dead_letter_topic"]]))

    # The on-demand Jobs (CronJob templates): every LEAFSYNC_<COMMAND>_* variable they set is one
    # the subcommand reads (clap lists it as `[env: NAME=…]` in --help); a misspelt one would be
    # silently ignored and, say, turn a dry run into a real one.
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]

    def selects(policy, labels, kind):
        sel = policy["spec"]["podSelector"]
        if kind not in policy["spec"].get("policyTypes", []):
            return False
        ok = all(labels.get(k) == v for k, v in sel.get("matchLabels", {}).items())
        for e in sel.get("matchExpressions", []):
            ok = ok and e["operator"] == "In" and labels.get(e["key"]) in e["values"]
        return ok

    for name, sub in [("leafsync-replay", "replay"), ("leafsync-backfill", "backfill")]:
        cj = find(docs, "CronJob", name)
        pod = cj["spec"]["jobTemplate"]["spec"]["template"]
        c = pod["spec"]["containers"][0]
        help_text = subprocess.run([str(bin_dir / "leafsync-worker"), sub, "--help"], capture_output=True,
                                   text=True, env={"PATH": "/usr/bin:/bin"}).stdout
        prefix = f"LEAFSYNC_{sub.upper()}_"
        cenv = {e["name"]: e for e in c.get("env", [])}
        read = set(re.findall(r"\[env: (\w+)[=\]]", help_text))
        unknown = [n for n in cenv if n.startswith(prefix) and n not in read]
        check(f"{overlay}: {name} sets only variables `{sub}` reads", not unknown and help_text, str(unknown))
        check(f"{overlay}: {name} is suspended and dry-runs unless told otherwise",
              cj["spec"]["suspend"] is True and cenv[f"{prefix}DRY_RUN"]["value"] == "true")
        check(f"{overlay}: {name} has the worker's config, and any Mongo URI from the Secret",
              c["args"][:2] == ["--config", "/etc/leafsync/leafsync.toml"]
              and "secretKeyRef" in cenv.get("LEAFSYNC__MONGO__URI", {}).get("valueFrom", {"secretKeyRef": 1}))
        labels = pod["metadata"]["labels"]
        check(f"{overlay}: {name} pods are selected by an egress policy (own label)",
              labels.get("app.kubernetes.io/name") == name
              and any(selects(p, labels, "Egress") and p["metadata"]["name"] != "default-deny" for p in policies))
    # A private CA (Strimzi's cluster CA is self-signed): every Kafka client reads the optional
    # `kafka-ca-pem` key of the Secret, so SASL_SSL works by adding one key.
    def ca_key(container, var):
        ref = {e["name"]: e for e in container.get("env", [])}.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
        return ref.get("name") == "leafsync-secrets" and ref.get("key") == "kafka-ca-pem"
    pods = {"leafsync-worker": worker["spec"]["template"],
            "leafsync-replay": find(docs, "CronJob", "leafsync-replay")["spec"]["jobTemplate"]["spec"]["template"],
            "leafsync-backfill": find(docs, "CronJob", "leafsync-backfill")["spec"]["jobTemplate"]["spec"]["template"]}
    for name, pod in pods.items():
        check(f"{overlay}: {name} gets the Kafka CA from the Secret (ssl.ca.pem)",
              ca_key(pod["spec"]["containers"][0], "LEAFSYNC__KAFKA__PROPERTIES__SSL_CA_PEM"))
    topics_job = find(docs, "Job", "leafsync-topics")["spec"]["template"]["spec"]["containers"][0]
    check(f"{overlay}: the topics Job gets the Kafka CA and trusts it",
          ca_key(topics_job, "SSL_CA_PEM") and "ssl.truststore.location" in topics_job["args"][0])
    ta = find(docs, "TriggerAuthentication", "leafsync-kafka")
    if ta:
        check(f"{overlay}: KEDA's TriggerAuthentication passes the Kafka CA (`ca`)",
              any(r["parameter"] == "ca" and r["key"] == "kafka-ca-pem" for r in ta["spec"]["secretTargetRef"]))
    bf = find(docs, "CronJob", "leafsync-backfill")["spec"]["jobTemplate"]["spec"]["template"]
    bc = bf["spec"]["containers"][0]
    bport = int({e["name"]: e for e in bc["env"]}["LEAFSYNC_BACKFILL_ADMIN_ADDR"]["value"].rsplit(":", 1)[1])
    check(f"{overlay}: backfill serves /metrics on its declared, annotated and admitted port",
          {p["name"]: p["containerPort"] for p in bc["ports"]}.get("admin") == bport
          and int(bf["metadata"]["annotations"]["prometheus.io/port"]) == bport
          and any(selects(p, bf["metadata"]["labels"], "Ingress")
                  and any(pt["port"] == bport for r in p["spec"].get("ingress", []) for pt in r.get("ports", []))
                  for p in policies))

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
        ta = find(docs, "TriggerAuthentication", trig[0]["authenticationRef"]["name"])
        check(f"{overlay}: TriggerAuthentication exists", ta is not None)
        # The keys kedacore/keda's apache-kafka scaler reads (pkg/scalers/apache_kafka_scaler.go,
        # struct tags l.50-86 at v2.21.1): anything else is silently ignored.
        reads_metadata = {"bootstrapServers", "consumerGroup", "topic", "partitionLimitation", "lagThreshold",
                          "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers",
                          "excludePersistentLag", "scaleToZeroOnInvalidOffset", "limitToPartitionsWithLag",
                          "ensureEvenDistributionOfPartitions", "sasl", "awsRegion", "tls"}
        reads_auth = {"sasl", "username", "password", "tls", "cert", "key", "keyPassword", "ca", "awsRegion"}
        check(f"{overlay}: every trigger key is one the apache-kafka scaler reads",
              set(m) <= reads_metadata, str(set(m) - reads_metadata))
        if ta:
            params = {t["parameter"] for t in ta["spec"]["secretTargetRef"]}
            check(f"{overlay}: every TriggerAuthentication parameter is one the scaler reads",
                  params <= reads_auth, str(params - reads_auth))
        # With minReplicaCount ≥ 1 KEDA never activates or deactivates (scale_scaledobjects.go
        # l.70-72, l.97-100): activationLagThreshold and cooldownPeriod would only mislead.
        if so["spec"].get("minReplicaCount", 0) >= 1:
            check(f"{overlay}: no inert activation/cooldown settings with minReplicaCount ≥ 1",
                  "activationLagThreshold" not in m and "cooldownPeriod" not in so["spec"])
    if overlay == "gke":
        # The collector's exporter and resource detector need the GKE metadata server.
        egress = find(docs, "NetworkPolicy", "otel-collector")["spec"]["egress"]
        allowed = {(b["ipBlock"]["cidr"], p["port"]) for r in egress for b in r.get("to", []) if "ipBlock" in b
                   for p in r.get("ports", [])}
        check("gke: the collector may reach the GKE metadata server (169.254.169.252:988, 169.254.169.254:80)",
              {("169.254.169.252/32", 988), ("169.254.169.254/32", 80)} <= allowed)
        check("gke: PodMonitoring for worker and API (Managed Prometheus ignores annotations)",
              {d["metadata"]["name"] for d in docs if d["kind"] == "PodMonitoring"}
              == {"leafsync-worker", "leafsync-api", "leafsync-backfill"})
        ing = find(docs, "Ingress", "leafsync-api")
        paths = ing["spec"]["rules"][0]["http"]["paths"]
        check("gke: Ingress routes /image-plant to the API service",
              paths[0]["path"] == "/image-plant" and paths[0]["backend"]["service"]["name"] == "leafsync-api")
        bc = find(docs, "BackendConfig", "leafsync-api")
        check("gke: load balancer health check on /ready", bc["spec"]["healthCheck"]["requestPath"] == "/ready"
              and bc["spec"]["healthCheck"]["port"] == api_port)

# Every kubectl command in the runbook names its namespace (or creates it).
for line in Path("docs/operations.md").read_text().splitlines():
    for cmd in re.findall(r"kubectl [^`|]*", line):
        if cmd.startswith(("kubectl kustomize", "kubectl version")) or "--local" in cmd:
            continue  # these never reach a cluster
        named = re.search(r"(^|\s)(-n|--namespace)[ =]\S+", cmd) or cmd.startswith("kubectl create namespace")
        check(f"docs/operations.md: `{cmd.strip()[:60]}` names the namespace", named)

# The dashboard only queries metrics the binaries define.
import json
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
