"""What the Kubernetes object schemas cannot see in deploy/kubernetes/: that the manifests
agree with each other and with the hookgate config they carry.

    python .ci/kubernetes.py deploy/kubernetes OUT_DIR

Checks the cross-references, then writes OUT_DIR/hookgate.toml (the ConfigMap's file,
its TLS paths moved into OUT_DIR) and OUT_DIR/env (the Secret keys the Deployment
passes, with stand-in values) for `hookgate check`. Runs in the venv that has
kubernetes-validate, whose PyYAML it uses.
"""

import pathlib
import re
import sys
import tomllib

import yaml


def fail(message):
    sys.exit(f"deploy/kubernetes: {message}")


def duration_seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if not match:
        fail(f"cannot read the duration {text!r}")
    return int(match[1]) * units[match[2]]


def main(directory, out):
    objects = {}
    for path in sorted(pathlib.Path(directory).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc

    deployment = objects[("Deployment", "hookgate")]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "hookgate"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    config_map = objects[("ConfigMap", "hookgate-config")]
    text = config_map["data"]["hookgate.toml"]
    config = tomllib.loads(text)

    # Several replicas, and the state they share lives in Redis.
    if deployment["spec"]["replicas"] < 2:
        fail("the Deployment should run several replicas")
    if "redis_url" not in config.get("store", {}) and "cluster" not in config.get("store", {}):
        fail("several replicas need a shared [store] (Redis)")

    # SIGTERM: the grace period outlasts the preStop pause plus hookgate's own drain.
    shutdown = duration_seconds(config["server"].get("shutdown_timeout", "30s"))
    pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= pause + shutdown:
        fail(f"terminationGracePeriodSeconds {grace} must exceed preStop {pause}s + shutdown_timeout {shutdown}s")

    # Ports: the container's named ports are the config's listeners.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for name, listen in [("webhooks", config["server"]["listen"]), ("admin", config["admin"]["listen"])]:
        if ports.get(name) != int(listen.rsplit(":", 1)[1]):
            fail(f"containerPort {name} {ports.get(name)} is not the config's {listen}")
        if not listen.startswith("0.0.0.0:"):
            fail(f"{listen}: a pod's listener must be reachable on the pod's address")

    # Probes: readiness on /readyz, liveness on /healthz, on the admin port, without a token.
    public = set(config["admin"].get("public_paths", []))
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        get = container[probe]["httpGet"]
        if get["path"] != path or get["port"] not in ("admin", ports["admin"]):
            fail(f"{probe} should GET {path} on the admin port")
        if "token" in config["admin"] and path not in public:
            fail(f"{path} needs admin.public_paths: the kubelet sends no token")

    # Config file and certificate: mounted where the config and the args say.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_arg = container["args"][container["args"].index("--config") + 1]
    config_volume = volumes["config"]["configMap"]["name"]
    if config_volume != "hookgate-config" or config_arg != f"{mounts['config']}/hookgate.toml":
        fail(f"--config {config_arg} is not the mounted ConfigMap's hookgate.toml")
    for key, file in [("cert", "tls.crt"), ("key", "tls.key")]:
        if config["server"]["tls"][key] != f"{mounts['tls']}/{file}":
            fail(f"server.tls.{key} is not the mounted Secret's {file}")

    # Every ${VAR} of the config comes from the environment the Deployment sets.
    env = {e["name"]: e for e in container.get("env", [])}
    wanted = sorted(set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", text)))
    for name in wanted:
        if name not in env:
            fail(f"the config reads ${{{name}}} and the Deployment does not set it")

    # The PDB and the Services select the Deployment's pods.
    for kind, name in [("PodDisruptionBudget", "hookgate"), ("Service", "hookgate"), ("Service", "hookgate-admin")]:
        spec = objects[(kind, name)]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        if any(labels.get(k) != v for k, v in selector.items()):
            fail(f"{kind} {name} does not select the hookgate pods")
        for port in spec.get("ports", []):
            if port.get("targetPort") not in ports and port.get("targetPort") not in ports.values():
                fail(f"{kind} {name} targets port {port.get('targetPort')}, which the pod does not have")

    out = pathlib.Path(out)
    tls_dir = mounts["tls"]
    (out / "hookgate.toml").write_text(text.replace(tls_dir, str(out)))
    stand_ins = {
        "REDIS_URL": "redis://redis:6379/0",
        "OPENAI_WEBHOOK_SECRET": "whsec_aG9va2dhdGUtZGVtby1zZWNyZXQtZG8tbm90LXVzZSE=",
    }
    (out / "env").write_text("".join(f"{n}={stand_ins.get(n, 'stand-in')}\n" for n in wanted))
    print(f"deploy/kubernetes: cross-checks passed; config needs {', '.join(wanted)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
