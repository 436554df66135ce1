"""``make k8s-check``: render deploy/kubernetes/ as kustomize would, without a cluster; check it.

Rendering: the kustomization's ``resources`` (plain YAML files, several objects each), its
``namespace``, ``labels`` and ``images``, and nothing else: any other kustomization field is
refused, so what this renders is what ``kubectl apply -k`` applies.

Checks, each object and then the whole:

* every object validates, strictly (no unknown field), against the Kubernetes schema of each
  version in :data:`K8S_VERSIONS` (the ``kubernetes-validate`` package, offline);
* one Deployment per stage (:data:`STAGES`), running ``python -m <its module>`` (a module that
  exists) as the image's user (the Dockerfile's ``USER``), non-root, read-only root file system,
  readiness on ``/readyz`` and liveness on ``/healthz`` on the port the stage serves them on,
  and a Service, a PodDisruptionBudget and a HorizontalPodAutoscaler that select or target it;
* every environment variable is a setting the code reads (:class:`Settings`), or one of
  :data:`PENDING`, which issue 29 names for the drain still to come; every secret setting comes
  from a Secret, never a literal;
* ``terminationGracePeriodSeconds`` covers the preStop sleep, the drain bound and the clean
  stop (:data:`~shared.runtime.lifecycle.STOP_GRACE_S`).

``python -m tools.k8s_check [--render FILE]`` prints what it checked; ``--render`` also writes the
rendered objects.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZATION = ROOT / "deploy" / "kubernetes" / "kustomization.yaml"
K8S_VERSIONS = ("1.29.0", "1.33.0")  # the oldest supported upstream and a recent one
# Deployment name -> the module it runs (services/launch.py, compose.yaml).
STAGES = {
    "twilio-edge": "services.twilio_edge",
    "transcoder": "services.transcoder",
    "realtime-worker": "services.realtime_worker",
    "tool-runner": "services.tool_runner",
    "recorder": "services.recorder",
    "console": "services.console",
}
# Set in the manifests for the drain issue 29 defines, read once it lands (docs/deploy.md).
PENDING = {"EDGE_DRAIN_SECONDS"}
DRAIN_VARS = {"twilio-edge": "EDGE_DRAIN_SECONDS", "realtime-worker": "WORKER_DRAIN_SECONDS"}
SECRET_SETTINGS = {"REDIS_URL"}  # besides every SecretStr: it may carry a password
_KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "labels", "images", "resources"}
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}


class CheckError(Exception):
    """The manifests are wrong: what and where."""


def render(kustomization: Path = KUSTOMIZATION) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k`` would apply, for the fields this renderer knows."""
    spec = yaml.safe_load(kustomization.read_text())
    unknown = set(spec) - _KUSTOMIZE_FIELDS
    if unknown:
        raise CheckError(f"{kustomization}: fields this renderer does not apply: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for name in spec.get("resources", []):
        path = kustomization.parent / name
        if not path.is_file():
            raise CheckError(f"{kustomization}: resource {name} is not a file here")
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    namespace = spec.get("namespace")
    images = {i["name"]: i for i in spec.get("images", [])}
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        if namespace and obj.get("kind") not in _CLUSTER_SCOPED:
            meta["namespace"] = namespace
        for entry in spec.get("labels", []):
            if entry.get("includeSelectors"):
                raise CheckError("labels with includeSelectors would change immutable selectors")
            meta.setdefault("labels", {}).update(entry["pairs"])
            template = obj.get("spec", {}).get("template")
            if entry.get("includeTemplates") and template is not None:
                template.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
        for container in _containers(obj):
            image = images.get(container.get("image", ""))
            if image:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return objects


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    return list(pod.get("containers", [])) + list(pod.get("initContainers", []))


def validate(objects: list[dict[str, Any]]) -> None:
    """Each object against the Kubernetes schema, strictly, offline."""
    import kubernetes_validate

    for version in K8S_VERSIONS:
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
                raise CheckError(f"{where} (Kubernetes {version}): {exc.message}") from None


def _dockerfile_user() -> tuple[int, int]:
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    if not users:
        raise CheckError("the Dockerfile's final USER is not numeric uid:gid")
    uid, gid = users[-1]
    return int(uid), int(gid)


def _settings() -> tuple[set[str], set[str]]:
    """Every setting's variable name, and the secret ones."""
    from pydantic import SecretStr

    from shared.runtime.settings import Settings

    names, secrets = set(), set(SECRET_SETTINGS)
    for field, info in Settings.model_fields.items():
        names.add(field.upper())
        if SecretStr in getattr(info.annotation, "__args__", (info.annotation,)):
            secrets.add(field.upper())
    return names, secrets


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check(objects: list[dict[str, Any]]) -> list[str]:
    """The project's own rules (the module docstring); returns what was checked, per stage."""
    from shared.runtime.lifecycle import STOP_GRACE_S

    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    config = {k: str(v) for c in by_kind.get("ConfigMap", []) for k, v in c["data"].items()}
    settings, secrets = _settings()
    uid, gid = _dockerfile_user()
    for key in config:
        if key not in settings | PENDING:
            raise CheckError(f"ConfigMap sets {key}, which no setting reads")
        if key in secrets:
            raise CheckError(f"ConfigMap sets {key}, a secret: take it from the Secret")
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    if set(deployments) != set(STAGES):
        raise CheckError(f"Deployments {sorted(deployments)}, stages {sorted(STAGES)}")
    report = []
    for name, module in STAGES.items():
        deployment = deployments[name]
        where = f"Deployment/{name}"
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        if container["command"] != ["python", "-m", module]:
            raise CheckError(f"{where}: runs {container['command']}, not python -m {module}")
        if importlib.util.find_spec(module) is None:
            raise CheckError(f"{where}: module {module} does not exist")
        security = pod.get("securityContext", {})
        if not security.get("runAsNonRoot") or (
            security.get("runAsUser"),
            security.get("runAsGroup"),
        ) != (uid, gid):
            raise CheckError(f"{where}: not run as the image's user {uid}:{gid}, non-root")
        own = container.get("securityContext", {})
        if not own.get("readOnlyRootFilesystem") or own.get("allowPrivilegeEscalation", True):
            raise CheckError(f"{where}: root file system writable or privilege escalation on")
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = container.get(probe, {}).get("httpGet", {})
            if get.get("path") != path or get.get("port") not in ports:
                raise CheckError(f"{where}: {probe} is not GET {path} on a port it names")
        if "metrics" in ports and str(ports["metrics"]) != config.get("METRICS_PORT"):
            raise CheckError(f"{where}: metrics port {ports['metrics']} is not METRICS_PORT")
        env = {e["name"]: e for e in container.get("env", [])}
        for var, entry in env.items():
            if var not in settings | PENDING:
                raise CheckError(f"{where}: sets {var}, which no setting reads")
            if var in secrets and "secretKeyRef" not in entry.get("valueFrom", {}):
                raise CheckError(f"{where}: {var} is a secret; take it from the Secret")
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        sleep_s = int(pre_stop["command"][1]) if pre_stop.get("command", [""])[0] == "sleep" else 0
        drain_s = int(env[DRAIN_VARS[name]]["value"]) if name in DRAIN_VARS else 0
        need = sleep_s + drain_s + STOP_GRACE_S
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace < need:
            raise CheckError(f"{where}: terminationGracePeriodSeconds {grace} < {need:g} needed")
        for kind in ("Service", "PodDisruptionBudget"):
            if not any(_selects(_selector(obj), pod_labels) for obj in by_kind.get(kind, [])):
                raise CheckError(f"{where}: no {kind} selects its pods")
        if not any(
            h["spec"]["scaleTargetRef"]
            == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
            for h in by_kind.get("HorizontalPodAutoscaler", [])
        ):
            raise CheckError(f"{where}: no HorizontalPodAutoscaler scales it")
        report.append(
            f"{name}: python -m {module} as {uid}:{gid}, grace {grace} s >= {need:g} s "
            f"(preStop {sleep_s} + drain {drain_s} + stop {STOP_GRACE_S:g})"
        )
    return report


def _selector(obj: dict[str, Any]) -> dict[str, str]:
    selector = obj.get("spec", {}).get("selector", {})
    return dict(selector.get("matchLabels", selector) if obj["kind"] != "Service" else selector)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--render", type=Path, help="also write the rendered objects here")
    args = parser.parse_args(argv)
    try:
        objects = render()
        validate(objects)
        report = check(objects)
    except CheckError as exc:
        print(f"k8s-check: {exc}", file=sys.stderr)
        return 1
    if args.render:
        args.render.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    print(
        f"k8s-check: {len(objects)} objects rendered from {KUSTOMIZATION.relative_to(ROOT)}, "
        f"valid against Kubernetes {' and '.join(K8S_VERSIONS)} (strict)"
    )
    for line in report:
        print(f"  {line}")
    missing = sorted(var for var in PENDING if var not in _settings()[0])
    if missing:
        print(
            f"  note: {', '.join(missing)} are set for the drain still to come; "
            "no code reads them yet"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
