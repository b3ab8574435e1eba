"""Alerts and dashboards as code: the rules pass promtool's checks and unit tests, and the committed
dashboards are what deploy/grafana/dashboards.py makes (their queries run on a Prometheus scraping the
stack in tests/test_stack.py)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "helm" / "medsynth" / "files"


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool (Debian's prometheus package) is a test tool: make tools installs it"
    return subprocess.run([binary, *args], cwd=FILES, capture_output=True, text=True, timeout=120)


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    check = promtool("check", "rules", "alerts.yaml")
    assert check.returncode == 0 and "SUCCESS: 6 rules found" in check.stdout, check.stdout + check.stderr
    tests = promtool("test", "rules", "alerts.test.yaml")
    assert tests.returncode == 0 and "SUCCESS" in tests.stdout, tests.stdout + tests.stderr


def test_a_broken_expectation_fails_the_rule_tests(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests with one expected label changed."""
    shutil.copy(FILES / "alerts.yaml", tmp_path / "alerts.yaml")
    text = (FILES / "alerts.test.yaml").read_text().replace("kind: train-generator}", "kind: evaluate}")
    (tmp_path / "alerts.test.yaml").write_text(text)
    result = subprocess.run([shutil.which("promtool"), "test", "rules", "alerts.test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0 and "MedsynthJobsFailing" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("medsynth_dashboards", REPO / "deploy" / "grafana" / "dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dashboards_are_what_the_code_makes(generator) -> None:
    made = generator.render()
    committed = {p.name: p.read_text() for p in (FILES / "dashboards").glob("*.json")}
    assert set(made) == set(committed) == {"pipeline.json", "training.json", "sampling.json", "ingestion.json"}
    stale = sorted(name for name in made if made[name] != committed[name])
    assert not stale, f"{stale} differ from deploy/grafana/dashboards.py: run make dashboards"


def test_every_panel_has_a_description_and_distinct_query_ids(generator) -> None:
    import json

    for name, text in generator.render().items():
        board = json.loads(text)
        assert board["uid"].startswith("medsynth-") and board["templating"]["list"][0]["type"] == "datasource"
        for panel in board["panels"]:
            assert panel["description"] and panel["targets"], (name, panel["title"])
            ids = [t["refId"] for t in panel["targets"]]
            assert len(set(ids)) == len(ids) and all(ids), (name, panel["title"], ids)
