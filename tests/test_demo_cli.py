"""`medsynth demo` pieces that need no stack: progress output of wait_for_job (a stub client at the
HTTP edge), the dataset name, the --dataset flag, the headline, and the stop when a case of the
folder did not get in (a stub ingest service on a socket)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI, Request  # module level: the stub's annotations are resolved here
from fastapi.responses import JSONResponse

from medsynth.local.cli import build_parser
from medsynth.core.errors import InvalidInput, MedsynthError
from medsynth.local.demo import PHANTOM_DATASET, dataset_name, headline, ingest_all, sanitise_name, wait_for_job

from platform_fixtures import live_server


class _Response:
    def __init__(self, body: dict) -> None:
        self.body = body

    def raise_for_status(self) -> _Response:
        return self

    def json(self) -> dict:
        return self.body


class StubClient:
    """Answers GET /v1/jobs/<id> with the given job dicts in turn (the last one repeats)."""

    def __init__(self, jobs: list[dict]) -> None:
        self.jobs, self.paths = jobs, []

    def get(self, path: str) -> _Response:
        self.paths.append(path)
        return _Response(self.jobs[min(len(self.paths) - 1, len(self.jobs) - 1)])


def _job(state: str, progress: float, message: str = "", error: str | None = None) -> dict:
    return {"job_id": "j1", "state": state, "progress": progress, "message": message, "error": error}


def _training_polls() -> list[dict]:
    polls = [_job("queued", 0.0), _job("running", 0.0, "loading data")]
    polls += [_job("running", s / 200, f"step {s}/200: val Dice {0.3 + s / 1000:.3f}") for s in range(1, 201)]  # 200 polls
    polls += [_job("running", 1.0, "testing on held-out real patients"), _job("succeeded", 1.0, "testing on held-out real patients")]
    return polls


def test_without_a_terminal_progress_is_one_line_per_stage_state_or_tenth() -> None:
    lines: list[str] = []
    client = StubClient(_training_polls())
    job = wait_for_job(client, "j1", echo=lines.append, tty=False, poll_s=0)
    assert job["state"] == "succeeded" and len(client.paths) == 204 and client.paths[0] == "/v1/jobs/j1"
    # queued; running "loading data"; the training stage at its start and at each 10 % up to 100 %;
    # a new stage at 100 %; succeeded — 15 lines for 204 polls
    assert len(lines) == 15, lines
    assert lines[0] == "  j1: queued 0% [0s]" and lines[1] == "  j1: running 0% loading data [0s]"
    percents = [int(line.split()[2].rstrip("%")) for line in lines[2:13]]
    assert percents == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert "step 1/200" in lines[2] and "step 20/200" in lines[3] and "step 200/200" in lines[12]
    assert "testing on held-out" in lines[13] and lines[14].startswith("  j1: succeeded 100%")


def test_a_changing_message_of_one_stage_does_not_print_per_poll() -> None:
    polls = [_job("running", 0.5, f"step {i}/9: loss 0.{i}") for i in range(9)] + [_job("succeeded", 1.0, "done")]
    lines: list[str] = []
    wait_for_job(StubClient(polls), "j1", echo=lines.append, tty=False, poll_s=0)
    assert len(lines) == 2


def test_on_a_terminal_the_bar_is_drawn_instead_of_lines(capsys: pytest.CaptureFixture) -> None:
    lines: list[str] = []
    wait_for_job(StubClient(_training_polls()[:6] + [_job("succeeded", 1.0)]), "j1", echo=lines.append, tty=True, poll_s=0)
    assert lines == [] and "j1:" in capsys.readouterr().err  # tqdm writes to stderr


def test_failed_job_raises_with_its_error_after_reporting_it() -> None:
    lines: list[str] = []
    with pytest.raises(MedsynthError, match="j1 failed: out of memory"):
        wait_for_job(StubClient([_job("running", 0.2, "x"), _job("failed", 0.2, "x", "out of memory")]), "j1",
                     echo=lines.append, tty=False, poll_s=0)  # fmt: skip
    assert "failed" in lines[-1]
    with pytest.raises(MedsynthError, match="still running"):
        wait_for_job(StubClient([_job("running", 0.2)]), "j1", echo=lines.append, tty=False, poll_s=0, timeout=0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("hippocampus-msd", "hippocampus-msd"), ("Task04 Hippocampus", "Task04-Hippocampus"), ("Tâche_01", "Tache_01"),
     ("..data..", "data"), ("a..b", "a.b"), ("-x-", "x"), ("***", "dataset"), ("x" * 80, "x" * 64)],
)  # fmt: skip
def test_sanitised_names_are_valid(raw: str, expected: str) -> None:
    assert sanitise_name(raw) == expected


def test_dataset_name_comes_from_the_flag_or_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "My Scans (2024)"
    folder.mkdir()
    assert dataset_name(folder) == "My-Scans-2024"
    assert dataset_name(Path(f"{folder}/")) == "My-Scans-2024"
    assert dataset_name(folder, "chosen") == "chosen"
    assert dataset_name(None) == PHANTOM_DATASET
    with pytest.raises(InvalidInput, match="dataset name"):
        dataset_name(folder, "../escape")


def test_demo_command_takes_a_dataset_flag() -> None:
    args = build_parser().parse_args(["demo", "--data", "/d/hippocampus-msd", "--dataset", "hippo", "--seg-steps", "5"])
    assert (args.data, args.dataset, args.seg_steps) == ("/d/hippocampus-msd", "hippo", 5)
    assert build_parser().parse_args(["demo"]).dataset is None


def test_headline_shows_baselines_per_class_dice_units_and_warnings() -> None:
    report = {
        "fidelity": [{"metric": "fid", "value": 0.17, "extractor": "enc", "preprocessing": "none", "n_real": 40, "n_fake": 64,
                      "real_baseline": 0.05, "baseline_split": "by patient (3 | 3 patients)", "baseline_n_a": 20,
                      "baseline_n_b": 20, "value_at_baseline_counts": 0.31}],
        "diversity": {"pixel": {"ratio": 0.2}, "feature": {"ratio": 0.3}, "threshold": 0.5, "warning": "possible mode collapse: x"},
        "utility": [{"source": "real", "mean_dice": 0.8, "dice_ci_low": 0.7, "dice_ci_high": 0.9, "mean_hd95": 2.5, "hd95_unit": "mm",
                     "dice_per_class": {"1": {"mean": 0.9}, "2": {"mean": None}}}],
        "relative_dice": 0.5, "memorization": {"fraction_flagged": 0.0},
        "release": {"policy": "filter", "flagged": 3, "draws": 67, "withheld": [{}, {}, {}], "released_flagged": 0},
    }  # fmt: skip
    text = headline(report)
    assert "release gate (filter): 3 of 67 draws flagged as near-copies of training images, 3 withheld, 0 released flagged" in text
    assert "real-vs-real baseline 0.05 (n=20/20, by patient (3 | 3 patients)) vs synthetic 0.31 at the same counts" in text
    assert "n=40 real / 64 synthetic" in text and "pixel 0.2, feature 0.3" in text and "WARNING: possible mode collapse" in text
    assert "per class 1: 0.900, 2: nan" in text and "HD95 2.50 mm" in text
    old = headline({"utility": [{"source": "real", "mean_dice": 0.8, "dice_ci_low": 0.7, "dice_ci_high": 0.9, "mean_hd95": 2.5}]})
    assert "HD95 2.50 px" in old
    held_out = {"metric": "fid", "value": 0.17, "extractor": "enc", "preprocessing": "none", "n_real": 40, "n_fake": 64,
                "real_baseline": 0.06, "baseline_n": 30, "baseline_n_train": 40, "value_at_baseline_counts": 0.33}
    missing = held_out | {"real_baseline": None, "baseline_missing": "no baseline: n = min(64 synthetic, 3 held-out real images) = 3"}
    text = headline({"fidelity": [held_out, missing]})
    assert "real-vs-real baseline 0.06 (held-out vs training, n=30 a side) vs synthetic 0.33 at the same n" in text
    assert "; no baseline: n = min(64 synthetic, 3 held-out real images) = 3" in text


def test_the_demo_does_not_go_on_when_a_case_did_not_get_in(tmp_path: Path) -> None:
    answers = {b"case_1": (500, "the store cannot be reached"), b"case_2": (422, "not a readable NIfTI"), b"case_3": (409, "already in")}
    stub = FastAPI()

    @stub.post("/v1/datasets/{dataset}/scans")
    async def scans(dataset: str, request: Request) -> JSONResponse:
        body = await request.body()
        status, detail = next((a for case, a in answers.items() if case in body), (201, ""))
        return JSONResponse({"detail": detail} if detail else {"scan_id": "s"}, status_code=status)

    (tmp_path / "msd" / "imagesTr").mkdir(parents=True)
    for i in range(4):
        (tmp_path / "msd" / "imagesTr" / f"case_{i}.nii.gz").write_bytes(b"voxels")
    lines: list[str] = []
    with live_server(stub) as url, pytest.raises(MedsynthError) as refused:
        ingest_all(tmp_path / "msd", "d", url, "msk_k_s", echo=lines.append)
    assert "2 of 4 cases" in str(refused.value) and "case_1, case_2 (reasons above)" in str(refused.value)
    summary = lines[0].splitlines()
    assert summary[0].startswith("accepted 1, already present 1, rejected 1, failed 1 (the platform's reason"), summary
    assert summary[1:3] == ["  case_1: HTTP 500: the store cannot be reached", "  case_2: HTTP 422: not a readable NIfTI"]
