"""`medsynth stack up` brings every service up as a real process; the README's curl line ingests a
scan; `medsynth ingest DIR` uploads a Decathlon folder with a summary of rejections; the api runs a
prepare-dataset job through Kafka and the trainer worker; `stack down` stops everything."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from medsynth.core.errors import MedsynthError
from medsynth.local.demo import DemoSettings, run_pipeline, wait_for_job

from medsynth.datasets.phantoms import write_phantom_dataset

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


def medsynth(*args: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsynth.local.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSYNTH_")}
    home = tmp_path_factory.mktemp("stack") / "home"
    env.update(MEDSYNTH_HOME=str(home), MEDSYNTH_STACK_BASE_PORT="18700", MEDSYNTH_RECONCILE_EVERY_S="2",
               MEDSYNTH_DICOM_PEERS='[{"ae_title": "HOSPPACS", "dataset": "pushed"}]')
    yield env
    medsynth("stack", "down", env=env)


def key(env: dict, role: str, project: str = "default") -> str:
    """A key made the way the README bootstraps the stack: ``medsynth keys create``; one per role and project."""
    name = f"TEST_KEY_{role}_{project}".upper()
    if name not in env:
        if project != "default" and project not in medsynth("projects", "list", env=env).stdout.split():
            assert medsynth("projects", "create", project, env=env).returncode == 0
        made = medsynth("keys", "create", "--project", project, "--role", role, "--name", "test_stack", env=env)
        assert made.returncode == 0 and made.stdout.startswith("msk_"), made.stdout + made.stderr
        env[name] = made.stdout.strip()
    return env[name]


def client(env: dict, role: str = "researcher", *, timeout: float = 60, project: str = "default") -> httpx.Client:
    return httpx.Client(base_url="http://127.0.0.1:18700", timeout=timeout,
                        headers={"Authorization": f"Bearer {key(env, role, project)}"})


def metrics(env: dict, port: int) -> str:
    token = (Path(env["MEDSYNTH_HOME"]) / "secrets" / "metrics-token").read_text()
    assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401
    return httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}).text


def readme_curl_line() -> str:
    lines = [l for l in (REPO / "README.md").read_text().splitlines() if l.strip().startswith("curl ") and "/scans" in l]
    assert len(lines) == 1, "README should document exactly one curl line for ingesting a scan"
    return lines[0].strip()


def test_stack_up_ingest_prepare_down(stack_env: dict, tmp_path: Path) -> None:
    up = medsynth("stack", "up", env=stack_env)
    assert up.returncode == 0, up.stdout + up.stderr
    for name in ("broker", "torchserve", "api", "ingest", "trainer", "sampler", "segmenter", "evaluator"):
        assert re.search(rf"^{name}\s", up.stdout, re.M), up.stdout
    status = medsynth("stack", "status", env=stack_env)
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("running, ready") == 6
    assert "DICOM C-STORE SCP: AE title MEDSYNTH at 127.0.0.1:18702; calling AE titles allowed: HOSPPACS -> default/pushed" in status.stdout
    echo = subprocess.run(["echoscu", "-aet", "HOSPPACS", "-aec", "MEDSYNTH", "127.0.0.1", "18702"], capture_output=True, text=True)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    stranger = subprocess.run(["echoscu", "-aet", "ANYONE", "-aec", "MEDSYNTH", "127.0.0.1", "18702"], capture_output=True, text=True)
    assert "Association Rejected" in stranger.stdout + stranger.stderr  # AE titles it was not given are refused

    data = tmp_path / "msd"
    write_phantom_dataset(data, n=6, seed=5, shape=(24, 24, 10))
    # the README's curl line, run inside the phantom folder, pointed at this test's port
    curl = readme_curl_line().replace(":8701/", ":18701/")
    result = subprocess.run(curl, shell=True, cwd=data, capture_output=True, text=True, timeout=60,
                            env={**stack_env, "MEDSYNTH_API_KEY": key(stack_env, "uploader")})
    assert result.returncode == 0 and '"scan_id"' in result.stdout, (curl, result.stdout, result.stderr)

    (data / "imagesTr" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (data / "imagesTr" / "._phantom_001.nii.gz").write_bytes(b"macOS resource fork")  # must be ignored
    assert medsynth("ingest", str(data), "--dataset", "demo", env=stack_env).returncode == 2  # no key: refused at once
    ingest = medsynth("ingest", str(data), "--dataset", "demo", env={**stack_env, "MEDSYNTH_API_KEY": key(stack_env, "uploader")})
    assert ingest.returncode == 1, ingest.stdout + ingest.stderr  # one rejection
    assert "accepted 5, already present 1, rejected 1" in ingest.stdout
    assert re.search(r"broken: HTTP 422: .*not a readable NIfTI", ingest.stdout), ingest.stdout

    with client(stack_env, timeout=30) as api:
        ds = api.get("/v1/datasets/demo").json()
        assert ds["scans"] == 6 and ds["patients"] == 6 and ds["labelled_scans"] == 6
        job = api.post("/v1/datasets/demo/views", json={"size": 32, "val_fraction": 0.2, "test_fraction": 0.2}).json()
        deadline = time.monotonic() + 120
        while (job := api.get(f"/v1/jobs/{job['job_id']}").json())["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
        assert job["state"] == "succeeded", job
        view = api.get(f"/v1/datasets/demo/views/{job['result_keys']['view'].split('/')[-2]}").json()
        assert sum(len(v) for v in view["patients"].values()) == 6
        metrics_text = metrics(stack_env, 18711)
        assert 'medsynth_jobs_total{kind="prepare-dataset",outcome="succeeded"} 1.0' in metrics_text
        assert "medsynth_ingest_scans_total" in metrics(stack_env, 18701)
        with client(stack_env, project="other") as other:  # a researcher of another project sees none of it
            assert other.get("/v1/datasets").json()["datasets"] == []
            assert other.get("/v1/datasets/demo").status_code == 404
            assert other.get(f"/v1/jobs/{job['job_id']}").status_code == 404



TINY = DemoSettings(size=32, family="joint-gan", gen_steps=12, cohort_size=24, seg_steps=6, seg_batch_size=8)
# Small SPADE, StyleGAN2 and mask-conditioned diffusion generators for the other kinds' run through the stack.
SMALL = {
    "spade": {"family": "spade", "latent_dim": 16, "base_channels": 8, "spade_hidden": 8, "disc_channels": 8,
              "num_scales": 1, "mask_latent_dim": 16, "mask_base_channels": 4, "mask_bank_size": 16},
    "stylegan2": {"family": "stylegan2", "latent_dim": 16, "style_dim": 16, "mapping_layers": 2, "channel_base": 256,
                  "channel_max": 16, "mbstd_group": 2, "conditional": True},
    "diffusion": {"family": "diffusion", "variant": "mask-conditioned", "channels": [8, 16], "num_head_channels": 8,
                  "train_timesteps": 50, "sample_steps": 4, "mask_bank_size": 16},
}


def test_pipeline_through_rest_kafka_workers_and_torchserve(stack_env: dict, tmp_path: Path) -> None:
    with client(stack_env, timeout=60) as api:
        timings: dict[str, float] = {}
        report = run_pipeline(api, "demo", TINY, timings, echo=lambda *_: None)
        assert [r["metric"] for r in report["fidelity"]] == ["fid", "kid"]
        assert report["fidelity"][0]["extractor"].startswith("in-domain unet encoder") and report["fidelity"][0]["n_fake"] == 24
        assert {r["source"] for r in report["utility"]} == {"real", "synthetic", "mixed"}
        assert 0 <= report["memorization"]["fraction_flagged"] <= 1
        evaluation = report["evaluation_job"]
        html = api.get(f"/v1/evaluations/{evaluation['job_id']}/report").text
        for section in ("Fidelity", "Utility", "Memorization audit", "Training curves", "data:image/png;base64"):
            assert section in html
        cohort_id = report["cohort_id"]
        manifest = api.get(f"/v1/cohorts/{cohort_id}").json()["manifest"]
        assert manifest["sampler"]["backend"] == "torchserve" and manifest["count"] == 24
        archive = api.get(f"/v1/cohorts/{cohort_id}/download")
        assert archive.status_code == 200
        (tmp_path / "c.zip").write_bytes(archive.content)
        names = zipfile.ZipFile(tmp_path / "c.zip").namelist()
        assert f"{cohort_id}/manifest.json" in names and f"{cohort_id}/samples/00023/label.nii.gz" in names
        release = manifest["release"]  # the memorization gate ran with its default policy
        assert release["policy"] == "filter" and release["released_flagged"] == 0 and release["draws"] >= 24
        pairs = api.get(f"/v1/cohorts/{cohort_id}/closest-pairs.png")
        assert pairs.status_code == 200 and pairs.content.startswith(b"\x89PNG") and not any("closest" in n for n in names)
        assert "Release gate" in html and f"{release['thresholds']['image']:.4g}" in html
        metrics_text = metrics(stack_env, 18711)
        assert "medsynth_trainer_steps_per_second" in metrics_text
        assert 'medsynth_trainer_loss{family="joint-gan",loss="loss_d"}' in metrics_text
        with client(stack_env, "admin") as admin:  # the download is in the audit trail with the manifest's digest
            (audited,) = admin.get("/v1/audit", params={"action": "cohort.download"}).json()["records"]
        digest = hashlib.sha256(zipfile.ZipFile(tmp_path / "c.zip").read(f"{cohort_id}/manifest.json")).hexdigest()
        assert audited["detail"] == {"manifest_sha256": digest} and audited["resource"] == {"cohort_id": cohort_id}
        assert audited["outcome"] == 200 and audited["role"] == "researcher"
        assert report["generator"]["family"] == "joint-gan" and report["generator"]["options"]["loss"] == "hinge"
        assert "<h2>Generator</h2>" in html


@pytest.mark.parametrize("family", sorted(SMALL))
def test_other_families_through_the_stack(family: str, stack_env: dict) -> None:
    """Train through REST/Kafka, sample every mask source through TorchServe, train a U-Net on the cohort."""
    with client(stack_env, timeout=60) as api:
        view_id = api.get("/v1/generators").json()["jobs"][0]["spec"]["view_id"]
        body = {"dataset": "demo", "view_id": view_id, "generator": SMALL[family], "training": {"steps": 6, "batch_size": 8},
                "condition_on": "slice-position" if SMALL[family].get("conditional") else "none"}
        gen = wait_for_job(api, api.post("/v1/generators", json=body).raise_for_status().json()["job_id"], echo=lambda *_: None)
        registry = api.get(f"/v1/generators/{gen['job_id']}").json()["generator"]
        assert registry["family"] == family and registry["steps_done"] == 6
        condition = 2 if SMALL[family].get("conditional") else None
        for source in registry["mask_sources"]:
            job = api.post("/v1/cohorts", json={"generator_id": gen["job_id"], "count": 8, "mask_source": source,
                                                "condition": condition}).raise_for_status().json()
            cohort = wait_for_job(api, job["job_id"], echo=lambda *_: None)
            manifest = api.get(f"/v1/cohorts/{cohort['job_id']}").json()["manifest"]
            assert manifest["family"] == family and manifest["sampler"]["backend"] == "torchserve"
            assert manifest["mode"] == {"mask_source": source, "condition": condition}
            assert manifest["masks"]["derived_from_training_patients"] is (source == "real-deformed")
        seg = {"dataset": "demo", "view_id": view_id, "source": "synthetic", "cohort_id": cohort["job_id"], "steps": 4, "batch_size": 8}
        run = wait_for_job(api, api.post("/v1/segmentations", json=seg).raise_for_status().json()["job_id"], echo=lambda *_: None)
        assert run["state"] == "succeeded"


def test_families_route_and_bad_generator_requests(stack_env: dict) -> None:
    with client(stack_env, timeout=60) as api:
        families = {f["family"]: f for f in api.get("/v1/generator-families").json()["families"]}
        assert set(families) == {"diffusion", "joint-gan", "spade", "stylegan2"}
        assert families["spade"]["mask_sources"] == ["generated", "real-deformed"]
        assert "loss" in families["joint-gan"]["options"] and "r1_gamma" in families["stylegan2"]["options"]
        view_id = api.get("/v1/generators").json()["jobs"][0]["spec"]["view_id"]
        base = {"dataset": "demo", "view_id": view_id}
        cases = [
            ({"generator": {"family": "vae"}}, "family"),
            ({"generator": {"family": "joint-gan", "mask_bank_size": 4}}, "mask_bank_size"),
            ({"generator": {"family": "joint-gan", "loss": "wgan-gp", "critic_norm": "batch"}}, "batch norm"),
            ({"generator": {"family": "stylegan2"}, "condition_on": "slice-position"}, "class-conditioned"),
            ({"generator": {"family": "stylegan2", "conditional": True}}, "conditional"),
        ]
        for extra, named in cases:
            r = api.post("/v1/generators", json=base | extra)
            assert r.status_code == 422 and named in r.text, (extra, r.status_code, r.text)
        joint = next(j for j in api.get("/v1/generators").json()["jobs"] if j["state"] == "succeeded")
        for cohort, named in (({"mask_source": "real-deformed"}, "has no mask source"), ({"condition": 1}, "without class conditioning")):
            r = api.post("/v1/cohorts", json={"generator_id": joint["job_id"], "count": 4} | cohort)
            assert r.status_code == 422 and named in r.json()["detail"], r.text
        for release, named in (({"policy": "ship-it"}, "policy"), ({"max_flagged_fraction": 2}, "max_flagged_fraction"), ({"gate": 0}, "gate")):
            r = api.post("/v1/cohorts", json={"generator_id": joint["job_id"], "count": 4, "release": release})
            assert r.status_code == 422 and named in r.text, (release, r.text)


def test_a_cohort_that_did_not_succeed_is_not_downloadable(stack_env: dict) -> None:
    """A cancelled cohort (one far too large to finish first) answers 409 on download, naming its state.
    (The block policy failing a cohort is tested with the real gate, writer and store and planted
    copies in tests/sampling/test_gate.py: no generator this stack trains draws copies on demand.)"""
    with client(stack_env, timeout=60) as api:
        joint = next(j for j in api.get("/v1/generators").json()["jobs"] if j["state"] == "succeeded")
        job_id = api.post("/v1/cohorts", json={"generator_id": joint["job_id"], "count": 100_000}).raise_for_status().json()["job_id"]
        assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        with pytest.raises(MedsynthError, match="cancelled"):
            wait_for_job(api, job_id, echo=lambda *_: None)
        r = api.get(f"/v1/cohorts/{job_id}/download")
        assert r.status_code == 409 and "cancelled" in r.text, (r.status_code, r.text)


def test_bad_requests_get_clear_errors(stack_env: dict) -> None:
    with client(stack_env, timeout=60) as api:
        r = api.post("/v1/cohorts", json={"generator_id": "train-generator-doesnotexist", "count": 4})
        assert r.status_code == 404 and "unknown generator" in r.json()["detail"]
        for count in (0, -1, 10**9):
            assert api.post("/v1/cohorts", json={"generator_id": "x", "count": count}).status_code == 422
        generators = api.get("/v1/generators").json()["jobs"]
        view_id = generators[0]["spec"]["view_id"]
        slow = api.post("/v1/generators", json={"dataset": "demo", "view_id": view_id, "training": {"steps": 100000}}).json()
        r = api.post("/v1/cohorts", json={"generator_id": slow["job_id"], "count": 4})
        assert r.status_code == 409 and "not ready" in r.json()["detail"]
        assert api.post(f"/v1/jobs/{slow['job_id']}/cancel").status_code == 200
        r = api.post("/v1/segmentations", json={"dataset": "demo", "view_id": view_id, "source": "synthetic", "cohort_id": "sample-cohort-missing"})
        assert r.status_code == 404 and "unknown cohort" in r.json()["detail"]
        r = api.post("/v1/segmentations", json={"dataset": "demo", "view_id": view_id, "source": "mixed"})
        assert r.status_code == 422 and "cohort_id" in r.json()["detail"]
        r = api.post("/v1/evaluations", json={"cohort_id": "sample-cohort-missing"})
        assert r.status_code == 404
        r = api.post("/v1/generators", json={"dataset": "demo", "view_id": "0000000000000000"})
        assert r.status_code == 404


def _study_spec(view_id: str) -> dict:
    return {
        "name": "phantom-grid", "dataset": "demo", "view_id": view_id, "seeds": [0, 1], "cohort_size": 16, "max_eval_samples": 32,
        "families": [{"label": "joint-gan", "generator": SMALL_JOINT, "training": {"steps": 4, "batch_size": 8}},
                     {"label": "spade", "generator": SMALL["spade"], "training": {"steps": 4, "batch_size": 8}, "mask_source": "real-deformed"}],
        "arms": {"synthetic": True, "ratios": [0.5], "synthetic_patients": [1], "augmentation": [False]},
        "segmentation": {"models": ["unet"], "steps": 4, "batch_size": 8},
    }


SMALL_JOINT = {"family": "joint-gan", "latent_dim": 16, "base_channels": 8}


def test_a_study_through_the_stack_then_reused(stack_env: dict, tmp_path: Path) -> None:
    """Two families, two seeds, four arms (real, synthetic, mixed 0.5, +1 patient): the study fans out into jobs over
    Kafka, ends with per-arm statistics, CSV and a report; the same study again reuses every job."""
    from medsynth.local.study_client import run_study, save_results

    with client(stack_env, timeout=60) as api:
        view_id = api.get("/v1/generators").json()["jobs"][0]["spec"]["view_id"]
        spec = _study_spec(view_id)
        lines: list[str] = []
        study = run_study(api, spec, poll_s=1.0, timeout_s=900, echo=lines.append)
        assert study["state"] == "succeeded", (study, lines)
        assert study["jobs"] == {"succeeded": 2 + 4 + 4 + 12 + 4}
        assert any("arm joint-gan · mixed 0.5 · unet · aug off: succeeded (2/2 runs)" in l for l in lines), lines
        results = api.get(study["results"]["json"]).json()
        arms = {a["arm_id"]: a for a in results["arms"]}
        assert set(arms) == {"real · real · unet · aug off"} | {f"{f} · {a} · unet · aug off" for f in ("joint-gan", "spade")
                                                                  for a in ("synthetic", "mixed 0.5", "+1 patients")}
        for arm in arms.values():
            assert arm["seeds_succeeded"] == 2 and arm["dice"]["n_seeds"] == 2 and arm["dice"]["n_patients"] == len(results["test_patients"])
            assert arm["dice"]["ci_low"] <= arm["dice"]["mean"] <= arm["dice"]["ci_high"]
        real = arms["real · real · unet · aug off"]["dice"]["mean"]
        spade = arms["spade · synthetic · unet · aug off"]
        if real > 0:
            assert spade["relative_dice"] == pytest.approx(spade["dice"]["mean"] / real)
        (group,) = results["comparisons"]
        assert {r["a"] for r in group["rows"]} == set(arms) - {group["against"]}
        for r in group["rows"]:  # two seeds: per-seed Wilcoxon and the pooled test; a p, or no p and the reason
            assert [t["seed"] for t in r["per_seed"]] == [0, 1] and r["decided_by"].startswith("pooled") and r["warnings"]
            assert (r["p"] is None and r["p_holm"] is None and r["refused"]) or 0 <= r["p"] <= r["p_holm"] <= 1
        assert "skipped" in results["friedman"]  # two families: the Friedman test needs three
        assert len(results["generators"]) == 4 and all(g["fid"] is not None for g in results["generators"])
        paths = save_results(api, study, tmp_path)
        csv_rows = (tmp_path / "results.csv").read_text().splitlines()
        assert len(csv_rows) == 1 + 14 and csv_rows[0].startswith("arm_id,family,arm,ratio,synthetic_patients")
        plus_one = api.get(f"/v1/segmentations/{arms['spade · +1 patients · unet · aug off']['per_seed'][0]['run_id']}").json()["metrics"]
        assert plus_one["source"] == "mixed" and plus_one["spec"]["synthetic_patients"] == 1
        assert 0 < plus_one["spec"]["synthetic_ratio"] < 0.5  # one patient's worth beside several real ones
        html = (tmp_path / "report.html").read_text()
        for text in ("What the numbers mean", "Too small for conclusions", "Relative Dice", "spade · mixed 0.5 · unet · aug off", "<svg",
                     "Samples and closest pairs per family", "training patient", "data:image/png;base64,", "t-SNE"):
            assert text in html, text
        assert len(paths) == 3

        jobs_before = len(api.get("/v1/jobs", params={"limit": 1000}).json()["jobs"])
        again = run_study(api, spec, poll_s=0.5, timeout_s=120, echo=lambda *_: None)
        assert again["state"] == "succeeded" and again["study_id"] != study["study_id"]
        assert len(api.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]) == jobs_before  # every job reused, none submitted
        assert api.get(again["results"]["json"]).json()["arms"] == results["arms"]


def test_bad_studies_are_refused(stack_env: dict) -> None:
    with client(stack_env, timeout=60) as api:
        view_id = api.get("/v1/generators").json()["jobs"][0]["spec"]["view_id"]
        spec = _study_spec(view_id)
        cases = [
            ({**spec, "seeds": list(range(10)), "arms": {"ratios": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], "augmentation": [False, True]},
              "segmentation": {"models": ["unet", "swin-unetr"]}}, 422, "more than the 500 allowed"),
            ({**spec, "arms": {"synthetic": False, "ratios": []}}, 422, "only real data"),
            ({**spec, "arms": {"synthetic_patients": [50]}}, 422, "cohort_size is 16"),
            ({**spec, "view_id": "no-such-view"}, 404, "no-such-view"),
            ({**spec, "families": [{"generator": {"family": "stylegan2", "conditional": True}}]}, 422, "conditional"),
        ]
        studies_before = api.get("/v1/studies").json()["count"]
        for body, code, named in cases:
            r = api.post("/v1/studies", json=body)
            assert r.status_code == code and named in r.text, (code, r.status_code, r.text[:400])
        assert api.get("/v1/studies").json()["count"] == studies_before  # nothing half-written
        assert api.get("/v1/studies/study-0000").status_code == 404
        unfinished = api.get("/v1/studies").json()["studies"][0]["study_id"]
        assert api.get(f"/v1/studies/{unfinished}/report").status_code in (200, 409)


def test_a_reader_study_in_a_real_browser(stack_env: dict) -> None:
    """The visual Turing test as a reader does it: Chromium (Playwright) opens the reader's link, rates and
    answers every image; a second answer, a missing rating and a forged token are refused; the results
    and the study report count the answers."""
    import shutil

    from playwright.sync_api import sync_playwright

    with client(stack_env, timeout=60) as api:
        study = next(s for s in api.get("/v1/studies").json()["studies"] if s["state"] == "succeeded")
        cohort_id = next(n["job_id"] for n in study["nodes"] if n["kind"] == "sample-cohort")
        made = api.post("/v1/reader-studies", json={"cohort_id": cohort_id, "n_real": 3, "n_synthetic": 3, "readers": ["alice", "bob"],
                                                    "rate_quality": True, "study_id": study["study_id"]})
        assert made.status_code == 201, made.text
        made = made.json()
        rs_id, tokens = made["reader_study_id"], {r["reader"]: r for r in made["readers"]}
        answers = ["real", "synthetic", "synthetic", "real", "real", "synthetic"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:18700{tokens['alice']['page']}")
            for i, given in enumerate(answers):
                page.wait_for_function("() => document.getElementById('image').complete && document.getElementById('image').naturalWidth > 0")
                assert page.locator("#progress").inner_text() == f"{i} of 6 answered"
                if i == 0:
                    page.click("#real")  # no rating yet: the page asks for one and sends nothing
                    assert "rate the image quality" in page.locator("#error").inner_text()
                    ARTIFACTS.mkdir(exist_ok=True)
                    page.screenshot(path=str(ARTIFACTS / "reader-study.png"))
                page.select_option("#rating", str(1 + i % 5))
                page.click(f"#{given}")
                page.wait_for_function(f"() => document.getElementById('progress').textContent.startsWith('{i + 1} of')")
            assert page.locator("#done").is_visible() and page.locator("#task").is_hidden()
            browser.close()
        alice = {"x-reader-token": tokens["alice"]["token"]}
        item = api.get(f"/v1/reader-studies/{rs_id}/next", headers={"x-reader-token": tokens["bob"]["token"]}).json()["item"]
        bob = {"x-reader-token": tokens["bob"]["token"]}
        assert api.post(f"/v1/reader-studies/{rs_id}/answers", headers=bob, json={"item": item, "answer": "real"}).status_code == 422  # no rating
        assert api.post(f"/v1/reader-studies/{rs_id}/answers", headers=bob, json={"item": item, "answer": "real", "quality": 4}).status_code == 201
        again = api.post(f"/v1/reader-studies/{rs_id}/answers", headers=bob, json={"item": item, "answer": "synthetic", "quality": 4})
        assert again.status_code == 409 and "already answered" in again.text
        forged = tokens["alice"]["token"][:-4] + "AAAA"
        assert api.get(f"/v1/reader-studies/{rs_id}/next", headers={"x-reader-token": forged}).status_code == 401
        assert httpx.get(f"http://127.0.0.1:18700/v1/reader-studies/{rs_id}/read?token={forged}").status_code == 401
        assert api.get(f"/v1/reader-studies/{rs_id}/next", headers=alice).json()["done"] is True
        results = api.get(f"/v1/reader-studies/{rs_id}").json()
        assert results["readers"]["alice"]["answered"] == 6 and results["readers"]["bob"]["answered"] == 1
        pooled = results["pooled"]
        assert pooled["answers"] == 7 and pooled["sensitivity"]["n"] + pooled["specificity"]["n"] == 7
        assert pooled["accuracy"]["successes"] == pooled["sensitivity"]["successes"] + pooled["specificity"]["successes"]
        alice_r = results["readers"]["alice"]
        assert alice_r["sensitivity"]["n"] == 3 and alice_r["specificity"]["n"] == 3  # three of each kind
        assert (alice_r["sensitivity"]["successes"] + (3 - alice_r["specificity"]["successes"])) == answers.count("synthetic")
        report = api.get(f"/v1/studies/{study['study_id']}/report").text
        assert "Visual Turing test" in report and "alice" in report
        assert api.get(f"/v1/studies/{study['study_id']}/results").json()["reader_studies"][0]["reader_study_id"] == rs_id
        refused = api.post("/v1/reader-studies", json={"cohort_id": cohort_id, "n_synthetic": 500, "readers": ["x"]})
        assert refused.status_code == 422 and "n_synthetic is 500" in refused.text


EXTERNAL_METRICS = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"}  # NVIDIA's DCGM exporter, on GPU nodes only


def test_dashboards_and_alerts_on_a_prometheus_scraping_the_stack(stack_env: dict, tmp_path: Path) -> None:
    """A real Prometheus (Debian's) scrapes every service and TorchServe of the stack the tests above
    exercised, with the metrics token, and loads the alert rules; every dashboard query runs on it,
    names only metrics it scraped (DCGM's excepted) and returns series."""
    import json
    import shutil
    import socket

    prometheus = shutil.which("prometheus")
    assert prometheus, "Debian's prometheus package is a test tool (make tools installs it)"
    with httpx.Client(base_url="http://127.0.0.1:18700", timeout=10) as anonymous:
        assert anonymous.get("/v1/datasets").status_code == 401  # one refusal for the guard's counter
    token_file = Path(stack_env["MEDSYNTH_HOME"]) / "secrets" / "metrics-token"
    services = [f"127.0.0.1:{18700 + offset}" for offset in (0, 1, 11, 12, 13, 14)]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(REPO / "helm" / "medsynth" / "files" / "alerts.yaml")],
        "scrape_configs": [
            {"job_name": "medsynth", "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
             "static_configs": [{"targets": services}]},
            {"job_name": "torchserve", "static_configs": [{"targets": ["127.0.0.1:18742"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "wb"))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as prom:
            deadline = time.monotonic() + 60
            while True:  # every target up, then a few more scrapes for rate() windows
                try:
                    targets = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
                except (httpx.HTTPError, ValueError):  # not listening yet, or still starting (a plain-text 503)
                    targets = []
                if len(targets) == 7 and all(t["health"] == "up" for t in targets):
                    break
                assert time.monotonic() < deadline, [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets] or (tmp_path / "log").read_text()
                time.sleep(0.5)
            time.sleep(4)
            rules = [r for g in prom.get("/api/v1/rules").json()["data"]["groups"] for r in g["rules"]]
            assert len(rules) == 6 and all(r["health"] == "ok" for r in rules), rules
            scraped = set(prom.get("/api/v1/label/__name__/values").json()["data"])
            for path in sorted((REPO / "helm" / "medsynth" / "files" / "dashboards").glob("*.json")):
                for panel in json.loads(path.read_text())["panels"]:
                    for target in panel["targets"]:
                        expr = target["expr"]
                        names = set(re.findall(r"\b(?:medsynth|ts|DCGM)_[A-Za-z_]+\b", expr)) - {"medsynth_"}
                        assert names, (path.name, panel["title"], expr)
                        assert names - EXTERNAL_METRICS <= scraped, (path.name, panel["title"], sorted(names - EXTERNAL_METRICS - scraped))
                        answer = prom.get("/api/v1/query", params={"query": expr}).json()
                        assert answer["status"] == "success", (path.name, panel["title"], answer)
                        if not names & EXTERNAL_METRICS:
                            assert answer["data"]["result"], (path.name, panel["title"], expr)
    finally:
        proc.terminate()
        proc.wait(timeout=30)



def test_stack_down_stops_everything(stack_env: dict) -> None:
    down = medsynth("stack", "down", env=stack_env)
    assert down.returncode == 0
    assert medsynth("stack", "status", env=stack_env).returncode == 1
    with pytest.raises(httpx.HTTPError):
        httpx.get("http://127.0.0.1:18700/healthz", timeout=2)
