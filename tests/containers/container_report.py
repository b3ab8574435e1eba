"""bench-results/containers/results.json and results.md: what the container test measured."""

from __future__ import annotations

import json
from pathlib import Path

COMMAND = "make test-containers"


def write_results(folder: Path, found: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(found, indent=2, default=str) + "\n")
    (folder / "results.md").write_text(markdown(found))


def markdown(found: dict) -> str:
    machine = found.get("machine", {})
    lines = [f"# The pipeline in containers — `{COMMAND}`", "",
             f"{machine.get('cpus', '?')} CPU cores, load average {machine.get('load_at_start', '?')} when the containers started "
             f"(other work was running); {machine.get('engine', 'podman')}, one container per service "
             f"(deploy/compose.yaml with deploy/compose.podman.yaml), started through testcontainers. {found.get('note', '')}".rstrip(), ""]
    up = found.get("up", {})
    if up:
        lines += [f"## Start: every container ready in {up['wall_s']:.0f} s", "",
                  "| service | image | started at s | start to ready s |", "|---|---|---|---|"]
        images = found.get("images", {})
        for name, row in sorted(up["services"].items(), key=lambda kv: kv[1]["started_at_s"]):
            lines.append(f"| {name} | {images.get(name, '')} | {row['started_at_s']:.1f} | {row['start_to_ready_s']:.1f} |")
        lines += ["", "Ready: healthy by the service's healthcheck (compose's, else the image's), run in the container; "
                  "the one-shot bucket and topic jobs: exited 0.", ""]
    stages = found.get("stages", {})
    if stages:
        lines += ["## The demo's path over REST", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {name} | {seconds:.1f} |" for name, seconds in stages.items()]
        lines.append("")
    crash = found.get("crash", {})
    if crash:
        lines += [f"## A worker killed mid-job: {crash['victim']}", "",
                  f"SIGKILL of the {crash['victim']} container's main process at {crash['progress_at_kill']:.0%} of its "
                  f"`{crash['job_kind']}` job; the engine's restart policy (compose's `restart: unless-stopped`) started it again.", "",
                  "| from the kill to | seconds |", "|---|---|",
                  f"| the container running again | {crash['restarted_s']:.1f} |",
                  f"| the container healthy | {crash['healthy_s']:.1f} |",
                  *([f"| the job running again (attempt 2) | {crash['job_running_again_s']:.1f} |"] if crash.get("job_running_again_s") else []),
                  f"| the job succeeded | {crash['job_done_s']:.1f} |", "",
                  f"The job's attempts: {crash['attempts']}; its outputs are in the store.", ""]
    headline = found.get("evaluation", {})
    if headline:
        lines += ["## The evaluation (tiny sizes: a check that it runs, not a result)", ""]
        lines += [f"- {key}: {value}" for key, value in headline.items()]
        lines.append("")
    return "\n".join(lines)
