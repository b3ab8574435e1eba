"""The one policy table: for every route of the api and ingest services, who may call it.

A route that is not in the table is refused (default deny), and ``tests/auth/test_policy_matrix.py``
fails on it, so a new route cannot ship without a line here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from medsynth.auth.principal import Role


class Access(str, Enum):
    public = "public"    # anonymous: probes and the API description
    metrics = "metrics"  # the metrics token, not a user's credentials
    roles = "roles"      # an authenticated caller holding one of the policy's roles
    reader = "reader"    # a reader study's reader token, checked by the route (medsynth.studies.reader)


class RateClass(str, Enum):
    """Which of a caller's request buckets a route draws on (:class:`medsynth.auth.guard.Guard`)."""

    interactive = "interactive"  # MEDSYNTH_RATE_LIMIT_PER_S / _BURST
    upload = "upload"            # MEDSYNTH_RATE_LIMIT_UPLOAD_PER_S / _BURST; scans also count against the per-minute upload quotas


@dataclass(frozen=True)
class Policy:
    action: str
    roles: frozenset[Role] = frozenset()
    access: Access = Access.roles
    project: bool = True  # acts on one project's resources (the caller's, or the one named in X-Medsynth-Project)
    rate: RateClass = RateClass.interactive


def _p(action: str, *roles: Role, project: bool = True, rate: RateClass = RateClass.interactive) -> Policy:
    return Policy(action, frozenset(roles), project=project, rate=rate)


UPLOADER, RESEARCHER, VIEWER, ADMIN = Role.uploader, Role.researcher, Role.viewer, Role.admin
READERS = (RESEARCHER, VIEWER)            # reports, metrics, states
STATUS = (RESEARCHER, VIEWER, ADMIN)      # job states
UPLOAD = RateClass.upload

#: (method, route template) → policy, for both apps.
POLICIES: dict[tuple[str, str], Policy] = {
    ("GET", "/healthz"): Policy("health", access=Access.public, project=False),
    ("GET", "/readyz"): Policy("readiness", access=Access.public, project=False),
    ("GET", "/metrics"): Policy("metrics", access=Access.metrics, project=False),
    # ingest
    ("POST", "/v1/datasets/{dataset}/scans"): _p("scan.upload", UPLOADER, RESEARCHER, rate=UPLOAD),
    ("POST", "/v1/datasets/{dataset}/dicom"): _p("dicom.upload", UPLOADER, RESEARCHER, rate=UPLOAD),
    ("POST", "/v1/datasets/{dataset}/dicomweb/studies"): _p("dicom.stow", UPLOADER, RESEARCHER, rate=UPLOAD),
    ("POST", "/v1/datasets/{dataset}/dicom/commit"): _p("dicom.commit", UPLOADER, RESEARCHER, rate=UPLOAD),
    ("GET", "/v1/datasets/{dataset}/dicom/series"): _p("dicom.series", UPLOADER, RESEARCHER),
    # datasets and views
    ("GET", "/v1/datasets"): _p("dataset.list", *READERS),
    ("GET", "/v1/datasets/{dataset}"): _p("dataset.read", *READERS),
    ("GET", "/v1/datasets/{dataset}/versions"): _p("dataset.versions", *READERS),
    ("GET", "/v1/datasets/{dataset}/manifest"): _p("dataset.manifest", RESEARCHER),
    ("POST", "/v1/datasets/{dataset}/views"): _p("view.create", RESEARCHER),
    ("GET", "/v1/datasets/{dataset}/views/{view_id}"): _p("view.read", RESEARCHER),
    # jobs
    ("GET", "/v1/jobs"): _p("job.list", *STATUS),
    ("GET", "/v1/jobs/{job_id}"): _p("job.read", *STATUS),
    ("POST", "/v1/jobs/{job_id}/cancel"): _p("job.cancel", RESEARCHER, ADMIN),
    # generators
    ("POST", "/v1/generators"): _p("generator.create", RESEARCHER),
    ("GET", "/v1/generators"): _p("generator.list", *READERS),
    ("GET", "/v1/generators/{generator_id}"): _p("generator.read", *READERS),
    ("GET", "/v1/generator-families"): _p("generator.families", *Role, project=False),
    # cohorts
    ("POST", "/v1/cohorts"): _p("cohort.create", RESEARCHER),
    ("POST", "/v1/cohorts/{cohort_id}/send"): _p("cohort.send", RESEARCHER),
    ("GET", "/v1/cohorts/{cohort_id}"): _p("cohort.read", *READERS),
    ("GET", "/v1/cohorts/{cohort_id}/closest-pairs.png"): _p("cohort.closest-pairs", RESEARCHER),
    ("GET", "/v1/cohorts/{cohort_id}/download"): _p("cohort.download", RESEARCHER),
    # segmentation runs and evaluations
    ("POST", "/v1/segmentations"): _p("segmentation.create", RESEARCHER),
    ("GET", "/v1/segmentations/{run_id}"): _p("segmentation.read", *READERS),
    ("POST", "/v1/evaluations"): _p("evaluation.create", RESEARCHER),
    ("GET", "/v1/evaluations/{evaluation_id}"): _p("evaluation.read", *READERS),
    ("GET", "/v1/evaluations/{evaluation_id}/report"): _p("evaluation.report", *READERS),
    # studies
    ("POST", "/v1/studies"): _p("study.create", RESEARCHER),
    ("GET", "/v1/studies"): _p("study.list", *READERS),
    ("GET", "/v1/studies/{study_id}"): _p("study.read", *READERS),
    ("GET", "/v1/studies/{study_id}/results"): _p("study.results", *READERS),
    ("GET", "/v1/studies/{study_id}/results.csv"): _p("study.results", *READERS),
    ("GET", "/v1/studies/{study_id}/report"): _p("study.report", *READERS),
    # reader studies: researchers make them and read the results; readers answer with their token
    ("POST", "/v1/reader-studies"): _p("reader-study.create", RESEARCHER),
    ("GET", "/v1/reader-studies/{reader_study_id}"): _p("reader-study.results", *READERS),
    ("GET", "/v1/reader-studies/{reader_study_id}/read"): Policy("reader-study.read", access=Access.reader, project=False),
    ("GET", "/v1/reader-studies/{reader_study_id}/next"): Policy("reader-study.next", access=Access.reader, project=False),
    ("GET", "/v1/reader-studies/{reader_study_id}/items/{item}.png"): Policy("reader-study.item", access=Access.reader, project=False),
    ("POST", "/v1/reader-studies/{reader_study_id}/answers"): Policy("reader-study.answer", access=Access.reader, project=False),
    # administration
    ("GET", "/v1/projects"): _p("project.list", *Role, project=False),
    ("POST", "/v1/projects"): _p("project.create", ADMIN, project=False),
    ("GET", "/v1/keys"): _p("key.list", ADMIN),
    ("POST", "/v1/keys"): _p("key.create", ADMIN),
    ("DELETE", "/v1/keys/{key_id}"): _p("key.revoke", ADMIN),
    ("GET", "/v1/audit"): _p("audit.read", ADMIN),
    ("GET", "/v1/audit/verify"): _p("audit.verify", ADMIN),
}

#: Served by FastAPI itself, outside the routers: anonymous.
PUBLIC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def policy_for(method: str, path: str) -> Policy | None:
    return POLICIES.get((method.upper(), path))


#: The route whose policy says who may see training images (its figure shows them beside the closest
#: synthetic draws). Routes readable by more roles — evaluation and study reports and their JSON, cohort
#: manifests — withhold training images, closest pairs and training patient ids from everyone else.
TRAINING_IMAGES_ROUTE = ("GET", "/v1/cohorts/{cohort_id}/closest-pairs.png")


def sees_training_data(roles: frozenset[Role]) -> bool:
    """Whether holding ``roles`` (in the project a request acts on) allows seeing training images."""
    return bool(roles & POLICIES[TRAINING_IMAGES_ROUTE].roles)
