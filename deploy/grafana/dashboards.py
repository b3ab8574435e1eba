"""medsynth's Grafana dashboards as code (grafana-foundation-sdk). The JSON they produce is committed
in helm/medsynth/files/dashboards/ (the chart ships it as ConfigMaps for Grafana's dashboard sidecar;
deploy/compose.yaml provisions it): `make dashboards` rewrites it, and a test fails when it is stale.

Every query names metrics the services export (medsynth.runtime.telemetry), TorchServe's own metrics
API, or NVIDIA's DCGM exporter (GPU utilisation; deployed beside the GPU operator, not by medsynth).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).resolve().parents[2] / "helm" / "medsynth" / "files" / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def query(expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)


def series(title: str, description: str, unit: str, *targets: prometheus.Dataquery, width: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).unit(unit).span(width).height(8).datasource(DATASOURCE)
    return panel.targets([t.ref_id(chr(ord("A") + i)) for i, t in enumerate(targets)])


def single(title: str, description: str, unit: str, target: prometheus.Dataquery, width: int = 6) -> stat.Panel:
    return stat.Panel().title(title).description(description).unit(unit).span(width).height(4).datasource(DATASOURCE).targets([target.ref_id("A")])


def board(uid: str, title: str, description: str, panels: list) -> dashboard.Dashboard:
    built = (dashboard.Dashboard(title).uid(uid).description(description).tags(["medsynth"]).time("now-6h", "now")
             .refresh("30s").timezone("browser")
             .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")))
    for panel in panels:
        built = built.with_panel(panel)
    return built


def pipeline() -> dashboard.Dashboard:
    return board("medsynth-pipeline", "medsynth / pipeline", "Jobs by kind and state, queue lag, failures, durations.", [
        single("Jobs running", "Job records in state running (counted by the api's reconciler).", "short",
               query('sum(medsynth_job_records{state="running"})', "running")),
        single("Jobs queued", "Job records waiting for a worker.", "short", query('sum(medsynth_job_records{state="queued"})', "queued")),
        single("Commands waiting", "Consumer lag summed over every worker group.", "short", query("sum(medsynth_consumer_lag)", "lag")),
        single("Dead letters (24 h)", "Commands that exhausted their attempts.", "short",
               query("sum(increase(medsynth_dead_letters_total[24h]))", "dead letters")),
        series("Job records by kind and state", "Every job record in the store, by kind and state.", "short",
               query("sum by (kind, state) (medsynth_job_records)", "{{kind}} {{state}}")),
        series("Queue lag per worker group", "Commands not yet consumed by each worker group, summed over its partitions; the autoscaler adds workers on it.",
               "short", query("sum by (group) (medsynth_consumer_lag)", "{{group}}")),
        series("Jobs handled by outcome (per minute)", "Handler attempts ending succeeded, failed, cancelled or error (retried).", "short",
               query("sum by (kind, outcome) (rate(medsynth_jobs_total[5m])) * 60", "{{kind}} {{outcome}}")),
        series("Failures and dead letters (per hour)", "Failed and retried attempts, and commands sent to a dead-letter topic.", "short",
               query('sum by (kind) (increase(medsynth_jobs_total{outcome=~"failed|error"}[1h]))', "{{kind}} failed"),
               query("sum by (kind) (increase(medsynth_dead_letters_total[1h]))", "{{kind}} dead-lettered")),
        series("Job duration p50 / p95", "Wall time of one handler attempt, by kind.", "s",
               query("histogram_quantile(0.5, sum by (le, kind) (rate(medsynth_job_duration_seconds_bucket[1h])))", "{{kind}} p50"),
               query("histogram_quantile(0.95, sum by (le, kind) (rate(medsynth_job_duration_seconds_bucket[1h])))", "{{kind}} p95")),
        series("API requests by route and status", "Requests per second on the api and ingest services, by route template and status.", "reqps",
               query("sum by (route, status) (rate(medsynth_http_requests_total[5m]))", "{{route}} {{status}}")),
        series("API latency p95 by route", "95th percentile request latency, by route template.", "s",
               query("histogram_quantile(0.95, sum by (le, route) (rate(medsynth_http_request_duration_seconds_bucket[5m])))", "{{route}}")),
        series("Refused requests and reconciler", "Requests refused by the guard (401/403/429), jobs the reconciler republished and its failed passes.",
               "short", query("sum by (status) (increase(medsynth_auth_refused_total[1h]))", "refused {{status}}"),
               query("sum(increase(medsynth_reconciler_republished_total[1h]))", "republished"),
               query("sum(increase(medsynth_reconciler_errors_total[1h]))", "reconciler errors")),
    ])


def training() -> dashboard.Dashboard:
    return board("medsynth-training", "medsynth / training", "Generator training: speed, losses, GPU use.", [
        series("Training speed", "Generator optimisation steps per second of the running job, per trainer.", "short",
               query("medsynth_trainer_steps_per_second", "{{instance}}")),
        series("Training step", "Step of the running generator-training job, per trainer.", "short", query("medsynth_trainer_step", "{{instance}}")),
        series("Losses", "Latest logged loss of each family and loss term.", "short",
               query("medsynth_trainer_loss", "{{family}} {{loss}}"), width=24),
        series("GPU utilisation", "From NVIDIA's DCGM exporter (GPU nodes only).", "percent",
               query("avg by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL)", "{{Hostname}} GPU {{gpu}}")),
        series("GPU memory used", "From NVIDIA's DCGM exporter (GPU nodes only).", "decmbytes",
               query("sum by (Hostname, gpu) (DCGM_FI_DEV_FB_USED)", "{{Hostname}} GPU {{gpu}}")),
        series("Generator and segmenter job durations p95", "95th percentile wall time of an attempt.", "s",
               query('histogram_quantile(0.95, sum by (le, kind) (rate(medsynth_job_duration_seconds_bucket{kind=~"train-generator|train-segmenter"}[6h])))',
                     "{{kind}}"), width=24),
    ])


def sampling() -> dashboard.Dashboard:
    return board("medsynth-sampling", "medsynth / sampling", "Cohort sampling through TorchServe and the release gate.", [
        series("Images sampled per second", "Synthetic samples written to cohorts, by sampler backend.", "short",
               query("sum by (backend) (rate(medsynth_sampler_samples_total[5m]))", "{{backend}}")),
        series("TorchServe requests by status", "Requests the sampler sent to TorchServe, by API and status (unreachable: no answer).", "reqps",
               query("sum by (api, status) (rate(medsynth_torchserve_requests_total[5m]))", "{{api}} {{status}}")),
        series("TorchServe latency seen by the sampler", "p50 / p95 of the sampler's TorchServe requests, by API.", "s",
               query("histogram_quantile(0.5, sum by (le, api) (rate(medsynth_torchserve_request_duration_seconds_bucket[5m])))", "{{api}} p50"),
               query("histogram_quantile(0.95, sum by (le, api) (rate(medsynth_torchserve_request_duration_seconds_bucket[5m])))", "{{api}} p95")),
        series("TorchServe inference time (server side)", "TorchServe's own measure: microseconds of inference per request, by model.", "µs",
               query("sum by (model_name) (rate(ts_inference_latency_microseconds[5m])) / sum by (model_name) (rate(ts_inference_requests_total[5m]))",
                     "{{model_name}}")),
        series("Release gate", "Draws withheld as near-copies of training images, and cohorts refused.", "short",
               query("sum(increase(medsynth_sampler_withheld_total[1h]))", "withheld per hour"),
               query("sum(increase(medsynth_sampler_refused_total[1h]))", "refused per hour")),
        series("Cohort job duration p95", "95th percentile wall time of a sample-cohort attempt.", "s",
               query('histogram_quantile(0.95, sum by (le) (rate(medsynth_job_duration_seconds_bucket{kind="sample-cohort"}[1h])))', "p95")),
    ])


def ingestion() -> dashboard.Dashboard:
    return board("medsynth-ingestion", "medsynth / ingestion", "Scans in: rates, bytes, rejections by reason, DICOM.", [
        series("Scans accepted per second", "Scan uploads (NIfTI and assembled DICOM series) accepted.", "short",
               query('sum(rate(medsynth_ingest_scans_total{outcome="accepted"}[5m]))', "accepted")),
        series("Rejections by reason", "Uploads refused, by the error that refused them.", "short",
               query('sum by (outcome) (increase(medsynth_ingest_scans_total{outcome!="accepted"}[1h]))', "{{outcome}}")),
        series("Bytes ingested per second", "Bytes of accepted scan uploads.", "Bps", query("sum(rate(medsynth_ingest_bytes_total[5m]))", "bytes")),
        series("DICOM instances by way in and outcome", "REST upload, STOW-RS and C-STORE instances, staged, ingested, quarantined or failed.", "short",
               query("sum by (via, outcome) (rate(medsynth_ingest_dicom_instances_total[5m]))", "{{via}} {{outcome}}")),
        series("Upload latency p95", "95th percentile latency of the ingest service's routes.", "s",
               query('histogram_quantile(0.95, sum by (le, route) (rate(medsynth_http_request_duration_seconds_bucket{route=~"/v1/datasets/.*"}[5m])))',
                     "{{route}}"), width=24),
    ])


DASHBOARDS = {"pipeline": pipeline, "training": training, "sampling": sampling, "ingestion": ingestion}


def render() -> dict[str, str]:
    """File name → the dashboard's JSON text."""
    return {f"{name}.json": json.dumps(make().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n" for name, make in DASHBOARDS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (args.out / name).write_text(text)
        print(args.out / name)


if __name__ == "__main__":
    main()
