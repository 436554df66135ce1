"""deploy/kubernetes/ renders and validates (make k8s-check), and the check catches what it must.

Never skipped: ``kubernetes-validate`` is a test dependency, so a missing one fails here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import kubernetes_validate  # noqa: F401 - a missing package must fail, not skip
import pytest

from tools.k8s_check import CheckError, check, main, render, validate


def test_the_manifests_render_validate_and_pass_the_projects_rules(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    for stage in ("twilio-edge", "transcoder", "realtime-worker", "tool-runner", "recorder"):
        assert f"  {stage}: python -m services." in out
    objects = render()
    kinds = [o["kind"] for o in objects]
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
        assert kinds.count(kind) == 6
    assert all(o["metadata"].get("namespace") == "voice-gateway" for o in objects[1:])
    images = {c["image"] for o in objects for c in _pod(o).get("containers", [])}
    assert images == {"voice-gateway:latest"}


def _pod(obj: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = obj.get("spec", {}).get("template", {}).get("spec", {})
    return pod


def _deployment(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name)


def _container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    container: dict[str, Any] = _pod(_deployment(objects, name))["containers"][0]
    return container


def test_the_schema_refuses_an_unknown_field() -> None:
    objects = copy.deepcopy(render())
    _deployment(objects, "transcoder")["spec"]["replica"] = 2  # a typo of replicas
    with pytest.raises(CheckError, match="replica"):
        validate([_deployment(objects, "transcoder")])


def _readiness_on_healthz(objects: list[dict[str, Any]]) -> None:
    _container(objects, "transcoder")["readinessProbe"]["httpGet"]["path"] = "/healthz"


def _setting_nobody_reads(objects: list[dict[str, Any]]) -> None:
    _container(objects, "transcoder")["env"].append({"name": "DRAIN_TIMEOUT", "value": "9"})


def _literal_secret(objects: list[dict[str, Any]]) -> None:
    _container(objects, "realtime-worker")["env"].append(
        {"name": "OPENAI_API_KEY", "value": "sk-in-the-manifest"}
    )


def _grace_shorter_than_the_drain(objects: list[dict[str, Any]]) -> None:
    _pod(_deployment(objects, "twilio-edge"))["terminationGracePeriodSeconds"] = 30


def _root(objects: list[dict[str, Any]]) -> None:
    _pod(_deployment(objects, "recorder"))["securityContext"]["runAsUser"] = 0


def _no_budget(objects: list[dict[str, Any]]) -> None:
    objects[:] = [
        o
        for o in objects
        if not (o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == "console")
    ]


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (_readiness_on_healthz, "readinessProbe"),
        (_setting_nobody_reads, "DRAIN_TIMEOUT"),
        (_literal_secret, "OPENAI_API_KEY is a secret"),
        (_grace_shorter_than_the_drain, "terminationGracePeriodSeconds 30"),
        (_root, "image's user"),
        (_no_budget, "no PodDisruptionBudget"),
    ],
)
def test_the_check_refuses_a_broken_manifest(
    break_it: Callable[[list[dict[str, Any]]], None], message: str
) -> None:
    objects = copy.deepcopy(render())
    break_it(objects)
    with pytest.raises(CheckError, match=message):
        check(objects)
