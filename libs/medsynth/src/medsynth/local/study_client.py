"""`medsynth study run spec.yaml`: start a study on the api, follow it arm by arm, save its results."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from medsynth.core.errors import InvalidInput, MedsynthError
from medsynth.local.api_client import api_client
from medsynth.local.resources import checked


def read_spec(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(f"cannot read the study spec {path}: {exc}") from exc
    if not isinstance(spec, dict):
        raise InvalidInput(f"the study spec {path} should be a mapping (dataset, view_id, families, ...), got {type(spec).__name__}")
    return spec


def _check(response: httpx.Response, doing: str) -> dict[str, Any]:
    """The body of a success; else the api's message ({"detail": …} or a problem's title, detail and errors), raised."""
    return checked(response, doing).json()


def _line(study: dict[str, Any]) -> str:
    jobs = study["jobs"]
    done = sum(jobs.get(s, 0) for s in ("succeeded", "failed", "cancelled", "blocked"))
    return (f"study {study['study_id']}: {study['state']}, {100 * study['progress']:.0f} % "
            f"({done}/{sum(jobs.values())} jobs ended; running {jobs.get('running', 0)}, failed {jobs.get('failed', 0)}, "
            f"blocked {jobs.get('blocked', 0)})")


def run_study(client: httpx.Client, spec: dict[str, Any], *, poll_s: float = 2.0, timeout_s: float | None = None,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """POST the study, print a line whenever its progress or an arm's state changes, return its final state."""
    study = _check(client.post("/v1/studies", json=spec), "starting the study")
    echo(f"study {study['study_id']}: {sum(study['jobs'].values())} jobs over {len(study['arms'])} arms")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown: dict[str, str] = {}
    last = ""
    while True:
        line = _line(study)
        if line != last:
            echo(line)
            last = line
        for arm in study["arms"]:
            if shown.get(arm["arm_id"]) != arm["state"] and arm["state"] != "waiting":
                shown[arm["arm_id"]] = arm["state"]
                echo(f"  arm {arm['arm_id']}: {arm['state']} ({arm['succeeded']}/{arm['runs']} runs)")
        if study["state"] != "running":
            return study
        if deadline is not None and time.monotonic() > deadline:
            raise MedsynthError(f"study {study['study_id']} still running after {timeout_s:.0f} s; it goes on: GET /v1/studies/{study['study_id']}")
        time.sleep(poll_s)
        study = _check(client.get(f"/v1/studies/{study['study_id']}"), "following the study")


def save_results(client: httpx.Client, study: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, route in (("results.json", "json"), ("results.csv", "csv"), ("report.html", "html")):
        response = client.get(study["results"][route])
        if response.status_code == 200:
            (out / name).write_bytes(response.content)
            paths.append(out / name)
    return paths


def summary_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for arm in results["arms"]:
        dice = arm.get("dice")
        if dice and dice.get("mean") is not None:
            rel = f", relative {arm['relative_dice']:.3f}" if arm.get("relative_dice") is not None else ""
            lines.append(f"  {arm['arm_id']}: Dice {dice['mean']:.3f} [{dice['ci_low']:.3f}, {dice['ci_high']:.3f}]{rel}")
        else:
            lines.append(f"  {arm['arm_id']}: no result")
    return lines


def main_run(args) -> int:
    from medsynth.local.client_config import load_client_config

    config = load_client_config(url=args.url)
    api_key = args.api_key or config.require_key("researcher")
    spec = read_spec(Path(args.spec))
    with api_client(config.api_url, api_key=api_key, timeout=60) as client:
        client.headers.update(config.headers())
        study = run_study(client, spec, timeout_s=args.timeout)
        if not study["results"]:
            print(f"study {study['study_id']} {study['state']} with no results: {study.get('error') or 'every arm failed'}", file=sys.stderr)
            return 1
        results = _check(client.get(study["results"]["json"]), "reading the results")
        print("\n".join(summary_lines(results)))
        for path in save_results(client, study, Path(args.out or f"study-{study['study_id']}")):
            print(f"wrote {path}")
    return 0 if study["state"] == "succeeded" else 1
