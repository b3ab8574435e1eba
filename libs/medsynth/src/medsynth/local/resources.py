"""The api's resources as `medsynth <resource> list|show|create|cancel|download` commands.

:data:`RESOURCES` is the table: for each resource, the REST routes behind each action, the columns of
its listing and the flags that fill a request body. :func:`run_action` carries an action out over an
:func:`~medsynth.local.api_client.api_client` and prints a table, a few lines, or (``--json``) the
api's own JSON. Lists follow cursor pagination where the api offers it (``next_cursor`` in the body
or a ``Link: <…>; rel="next"`` header) and work without it. Every refusal is raised as
:class:`ApiError` carrying the api's message, from ``{"detail": …}`` or an RFC 9457 problem
(``title``, ``detail``, ``errors``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from medsynth.core.errors import InvalidInput, MedsynthError
from medsynth.local.api_client import job_id_of

Echo = Callable[[str], None]


class ApiError(MedsynthError):
    """The api refused or failed a request; the message is the api's, with the status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def problem_message(response: httpx.Response) -> str:
    """What the api said went wrong, as one line: an RFC 9457 problem's ``detail`` (its ``title`` when it
    has none) and those of its ``errors`` (``field: message``) the detail does not already say, FastAPI's
    ``{"detail": "…"}`` or its list of validation errors, or the body's first 500 characters when it is
    not JSON."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if not isinstance(body, dict):
        return json.dumps(body)[:500]
    detail = body.get("detail")
    parts = [detail] if isinstance(detail, str) and detail else []
    errors = body.get("errors") if isinstance(body.get("errors"), list) else detail if isinstance(detail, list) else []
    for error in errors:
        what, text = _one_error(error)
        if not (parts and what in parts[0]):
            parts.append(text)
    if not parts and isinstance(body.get("title"), str):
        parts.append(body["title"])
    return "; ".join(parts) or json.dumps(body)[:500]


def _one_error(error: Any) -> tuple[str, str]:
    """(the message, ``field: message``) of one entry of a problem's ``errors`` or FastAPI's validation list."""
    if not isinstance(error, dict):
        return str(error), str(error)
    where = error.get("loc") or error.get("pointer") or error.get("field") or error.get("name") or ""
    if isinstance(where, list):  # FastAPI's loc: ["body", "count"]
        where = ".".join(str(p) for p in where if p != "body")
    elif isinstance(where, str):
        where = where.removeprefix("#/").replace("/", ".")
    what = str(error.get("msg") or error.get("detail") or error.get("message") or json.dumps(error))
    return what, f"{where}: {what}" if where else what


def checked(response: httpx.Response, doing: str) -> httpx.Response:
    """``response`` if it is a success; else :class:`ApiError` naming what was being done, the status and the api's message."""
    if response.status_code < 400:
        return response
    raise ApiError(f"{doing}: HTTP {response.status_code}: {problem_message(response)}", response.status_code)


# --- the table --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Flag:
    """A ``create`` flag that sets one field of the request body (over what ``--file`` holds)."""

    name: str
    field: str
    type: Callable[[str], Any] = str
    many: bool = False
    help: str = ""


@dataclass(frozen=True)
class Download:
    route: str  # "{id}" is the resource's id
    filename: str


@dataclass(frozen=True)
class Resource:
    """One resource: its routes (``{id}`` the resource's id, ``{dataset}`` a path parameter taken from
    ``--dataset``), the key of its listing's items and their columns, its ``create`` flags."""

    name: str
    noun: str
    help: str
    list_route: str
    list_field: str
    columns: tuple[Column, ...]
    show_route: str
    id_column: str
    create_route: str | None = None
    create_flags: tuple[Flag, ...] = ()
    job_kind: str | None = None  # a resource made by a job of this kind: listed through /v1/jobs, cancelled there
    path_params: tuple[str, ...] = ()
    downloads: tuple[Download, ...] = ()

    @property
    def actions(self) -> list[str]:
        actions = ["list", "show"]
        actions += ["create"] if self.create_route else []
        actions += ["cancel"] if self.job_kind or self.name == "jobs" else []
        actions += ["download"] if self.downloads else []
        return actions


def _at(*path: str) -> Callable[[dict[str, Any]], Any]:
    def get(item: dict[str, Any]) -> Any:
        value: Any = item
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        return value

    return get


def _family(job: dict[str, Any]) -> str | None:
    """The trained family: the one family field of a train-generator spec (``joint_gan`` → ``joint-gan``)."""
    spec = job.get("spec") or {}
    return next((k.replace("_", "-") for k in ("joint_gan", "spade", "stylegan2", "diffusion") if k in spec), None)


def _view_of(job: dict[str, Any]) -> str | None:
    key = (job.get("result_keys") or {}).get("view")
    return key.split("/")[-2] if key else None


JOB = (Column("id", _at("job_id")), Column("state", _at("state")), Column("progress", _at("progress")))
CREATED = (Column("created", _at("created_at")),)

RESOURCES: dict[str, Resource] = {r.name: r for r in (
    Resource("datasets", "dataset", "datasets (made by ingesting scans: medsynth ingest)",
             "/v1/datasets", "datasets",
             (Column("dataset", _at("dataset")), Column("version", _at("version")), Column("scans", _at("scans")),
              Column("patients", _at("patients")), Column("labelled", _at("labelled_scans")), *CREATED),
             "/v1/datasets/{id}", "dataset"),
    Resource("views", "view", "training views of a dataset (prepare-dataset jobs)",
             "/v1/jobs?kind=prepare-dataset", "jobs",
             (*JOB, Column("dataset", _at("spec", "dataset")), Column("size", _at("spec", "size")), Column("view", _view_of), *CREATED),
             "/v1/datasets/{dataset}/views/{id}", "view", "/v1/datasets/{dataset}/views",
             (Flag("--size", "size", int, help="edge of each slice in voxels"),
              Flag("--seed", "seed", int, help="the patient split's seed")),
             job_kind="prepare-dataset", path_params=("dataset",)),
    Resource("generators", "generator", "trained generators (train-generator jobs)",
             "/v1/generators", "jobs",
             (*JOB, Column("family", _family), Column("dataset", _at("spec", "dataset")), Column("view", _at("spec", "view_id")), *CREATED),
             "/v1/generators/{id}", "id", "/v1/generators",
             (Flag("--dataset", "dataset"), Flag("--view-id", "view_id"),
              Flag("--family", "generator", lambda v: {"family": v}, help="the family, with its default options")),
             job_kind="train-generator"),
    Resource("cohorts", "cohort", "synthetic cohorts (sample-cohort jobs): request, follow, download",
             "/v1/jobs?kind=sample-cohort", "jobs",
             (*JOB, Column("generator", _at("spec", "generator_id")), Column("count", _at("spec", "count")), *CREATED),
             "/v1/cohorts/{id}", "id", "/v1/cohorts",
             (Flag("--generator", "generator_id", help="the generator's id"), Flag("--count", "count", int),
              Flag("--seed", "seed", int), Flag("--formats", "formats", many=True, help="nifti png dicom"),
              Flag("--mask-source", "mask_source", help="generated or real-deformed (families that have it)")),
             job_kind="sample-cohort", downloads=(Download("/v1/cohorts/{id}/download", "{id}.zip"),)),
    Resource("segmentations", "segmentation run", "segmentation runs (train-segmenter jobs)",
             "/v1/jobs?kind=train-segmenter", "jobs",
             (*JOB, Column("source", _at("spec", "source")), Column("dataset", _at("spec", "dataset")),
              Column("cohort", _at("spec", "cohort_id")), *CREATED),
             "/v1/segmentations/{id}", "id", "/v1/segmentations",
             (Flag("--dataset", "dataset"), Flag("--view-id", "view_id"), Flag("--source", "source", help="real, synthetic or mixed"),
              Flag("--cohort", "cohort_id"), Flag("--steps", "steps", int)),
             job_kind="train-segmenter"),
    Resource("evaluations", "evaluation", "evaluations of cohorts (evaluate jobs) and their reports",
             "/v1/jobs?kind=evaluate", "jobs",
             (*JOB, Column("cohort", _at("spec", "cohort_id")), *CREATED),
             "/v1/evaluations/{id}", "id", "/v1/evaluations",
             (Flag("--cohort", "cohort_id"), Flag("--runs", "segmentation_run_ids", many=True, help="segmentation run ids"),
              Flag("--reference-run", "reference_run_id")),
             job_kind="evaluate", downloads=(Download("/v1/evaluations/{id}/report", "{id}.html"),)),
    Resource("jobs", "job", "jobs of every kind: list, inspect, cancel",
             "/v1/jobs", "jobs", (*JOB, Column("kind", _at("kind")), Column("message", _at("message")), *CREATED),
             "/v1/jobs/{id}", "id"),
    Resource("studies", "study", "studies (grids of generators x seeds x arms; `medsynth study run` follows one)",
             "/v1/studies", "studies",
             (Column("id", _at("study_id")), Column("name", _at("name")), Column("state", _at("state")),
              Column("progress", _at("progress")), *CREATED),
             "/v1/studies/{id}", "id", "/v1/studies",
             downloads=(Download("/v1/studies/{id}/results", "results.json"), Download("/v1/studies/{id}/results.csv", "results.csv"),
                        Download("/v1/studies/{id}/report", "report.html"))),
)}


# --- requests ---------------------------------------------------------------------------------------------


def route(template: str, *, id: str = "", **params: str) -> str:
    """``template`` with ``{id}`` and path parameters filled in, each quoted as one path segment."""
    from urllib.parse import quote

    return template.format(id=quote(id, safe=""), **{k: quote(v, safe="") for k, v in params.items()})


def _next_page(response: httpx.Response, body: Any, url: httpx.URL) -> httpx.URL | None:
    cursor = body.get("next_cursor") if isinstance(body, dict) else None
    if cursor:
        return url.copy_set_param("cursor", cursor)
    link = response.links.get("next", {}).get("url")
    return url.join(link) if link else None


def list_pages(client: httpx.Client, path: str, items_field: str, *, params: dict[str, Any] | None = None,
               limit: int | None = None, doing: str = "listing") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every item of a listing, page after page while the api names a next one (at most ``limit``
    items; ``limit`` is also sent as the page size); returns the items and the pages' bodies."""
    url = client.build_request("GET", path, params={**(params or {}), **({"limit": limit} if limit else {})}).url
    items: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []
    seen: set[str] = set()
    while url is not None and str(url) not in seen and (limit is None or len(items) < limit):
        seen.add(str(url))
        response = checked(client.get(url), doing)
        body = response.json()
        pages.append(body)
        page = body.get(items_field, body.get("items", [])) if isinstance(body, dict) else body
        items += page
        url = _next_page(response, body, url) if page else None
    return items[:limit] if limit else items, pages


# --- output -----------------------------------------------------------------------------------------------


def _cell(value: Any, header: str) -> str:
    if value is None:
        return "-"
    if header == "progress" and isinstance(value, (int, float)):
        return f"{value:.0%}"
    if header == "created" and isinstance(value, str):
        return value[:19].replace("T", " ")
    return str(value)


def table(items: list[dict[str, Any]], columns: tuple[Column, ...]) -> list[str]:
    """Rows under a header, each column as wide as its widest cell (the last one left ragged)."""
    rows = [[c.header for c in columns]] + [[_cell(c.value(item), c.header) for c in columns] for item in items]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def details(obj: dict[str, Any], depth: int = 3, indent: str = "") -> tuple[list[str], bool]:
    """``key: value`` lines, nested mappings indented up to ``depth`` levels; longer lists and deeper
    mappings as a count. Also whether anything was left out that way (``--json`` shows all)."""
    lines: list[str] = []
    cut = False
    for key, value in obj.items():
        if isinstance(value, dict) and value and depth > 1:
            lines.append(f"{indent}{key}:")
            sub, sub_cut = details(value, depth - 1, indent + "  ")
            lines += sub
            cut = cut or sub_cut
        elif isinstance(value, dict):
            lines.append(f"{indent}{key}: " + (f"({len(value)} fields)" if value else "{}"))
            cut = cut or bool(value)
        elif isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value) and len(value) <= 8:
            lines.append(f"{indent}{key}: {', '.join(map(str, value)) if value else '[]'}")
        elif isinstance(value, list):
            lines.append(f"{indent}{key}: ({len(value)} items)")
            cut = True
        else:
            lines.append(f"{indent}{key}: {'-' if value is None else value}")
    return lines, cut


def print_json(body: Any, echo: Echo) -> None:
    echo(json.dumps(body, indent=2, default=str))


# --- actions ----------------------------------------------------------------------------------------------


@dataclass
class Request:
    """What one action was asked for (from the command line)."""

    resource: Resource
    action: str
    id: str | None = None
    as_json: bool = False
    path_params: dict[str, str] = field(default_factory=dict)
    filters: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    body_file: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    out: str | None = None
    force: bool = False


def run_action(client: httpx.Client, req: Request, echo: Echo = print) -> int:
    """Carry out ``req`` (its ``action`` one of the resource's :attr:`Resource.actions`); the exit status."""
    action = {"list": do_list, "show": do_show, "create": do_create, "cancel": do_cancel, "download": do_download}[req.action]
    return action(client, req, echo)


def do_list(client: httpx.Client, req: Request, echo: Echo) -> int:
    r = req.resource
    path, _, query = r.list_route.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&") if p) | {k: v for k, v in req.filters.items() if v}
    items, pages = list_pages(client, path, r.list_field, params=params, limit=req.limit, doing=f"listing {r.name}")
    if req.as_json:
        if len(pages) == 1 and req.limit is None:
            print_json(pages[0], echo)  # as the api answered
        else:
            print_json({r.list_field: items, "count": len(items)}, echo)
        return 0
    if not items:
        echo(f"no {r.name}")
        return 0
    for line in table(items, r.columns):
        echo(line)
    return 0


def do_show(client: httpx.Client, req: Request, echo: Echo) -> int:
    r = req.resource
    body = checked(client.get(route(r.show_route, id=req.id or "", **req.path_params)), f"{r.noun} {req.id}").json()
    if req.as_json:
        print_json(body, echo)
        return 0
    lines, cut = details(body)
    for line in lines:
        echo(line)
    if cut:
        echo(f"(shortened: medsynth {r.name} show {req.id} --json for all of it)")
    return 0


def read_body(path: str) -> dict[str, Any]:
    """A request body from a YAML or JSON file (``-``: standard input); YAML is a superset of JSON."""
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        body = yaml.safe_load(text) if text.strip() else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidInput(f"cannot read the request body {path}: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInput(f"the request body {path} should be a mapping of fields, got {type(body).__name__}")
    return body


def do_create(client: httpx.Client, req: Request, echo: Echo) -> int:
    r = req.resource
    body = read_body(req.body_file) if req.body_file else {}
    for key, value in req.flags.items():  # a flag over the file's field (a mapping: over its keys)
        if isinstance(value, list):  # --formats nifti,png or --formats nifti png
            value = [part for v in value for part in str(v).split(",") if part]
        if value is not None:
            body[key] = {**body[key], **value} if isinstance(value, dict) and isinstance(body.get(key), dict) else value
    response = client.post(route(r.create_route or "", **req.path_params), json=body)
    job_id = job_id_of(response)
    if response.status_code == 503 and job_id is not None:  # recorded; published when the broker is back
        if req.as_json:
            print_json({"job_id": job_id, "state": "queued", "deferred": problem_message(response)}, echo)
        else:
            echo(f"{r.noun} {job_id}: recorded and queued; the broker is unreachable for now, it is published when it is back "
                 f"(do not resubmit): medsynth {r.name} show {job_id}")
        return 0
    created = checked(response, f"creating a {r.noun}").json()
    if req.as_json:
        print_json(created, echo)
        return 0
    new_id = created.get("job_id") or created.get("study_id") or created.get(r.id_column)
    echo(f"{r.noun} {new_id}: {created.get('state', 'created')}")
    follow = f"medsynth jobs show {new_id}" if r.name == "views" else f"medsynth {r.name} show {new_id}"
    echo(f"follow it: {follow}")
    return 0


def do_cancel(client: httpx.Client, req: Request, echo: Echo) -> int:
    r = req.resource
    if r.name not in ("jobs", "views"):  # through the resource's own route first: another kind's id is refused there
        checked(client.get(route(r.show_route, id=req.id or "")), f"{r.noun} {req.id}")
    job = checked(client.post(route("/v1/jobs/{id}/cancel", id=req.id or "")), f"cancelling {r.noun} {req.id}").json()
    if req.as_json:
        print_json(job, echo)
    elif job["state"] == "cancelled":
        echo(f"{r.noun} {job['job_id']}: cancelled")
    else:
        echo(f"{r.noun} {job['job_id']}: cancelling ({job['state']}; a running job stops at its next progress step)")
    return 0


def do_download(client: httpx.Client, req: Request, echo: Echo) -> int:
    """Each of the resource's downloads, into ``--out``: a file for one download (default
    ``./<id>.zip``; into it if it is a folder), a folder for several (default ``./<id>/``)."""
    r = req.resource
    rid = req.id or ""
    if len(r.downloads) == 1:
        target = Path(req.out or ".")
        name = r.downloads[0].filename.format(id=rid)
        paths = [target / name if target.is_dir() else target]
    else:
        folder = Path(req.out or rid)
        paths = [folder / d.filename.format(id=rid) for d in r.downloads]
    taken = [str(p) for p in paths if p.exists()]
    if taken and not req.force:
        raise InvalidInput(f"{', '.join(taken)} already exists; --force replaces it")
    written = []
    for download, path in zip(r.downloads, paths):
        written.append({"path": str(path), "bytes": _fetch(client, route(download.route, id=rid), path, f"downloading {r.noun} {rid}")})
    if req.as_json:
        print_json({"id": rid, "files": written}, echo)
    else:
        for w in written:
            echo(f"wrote {w['path']} ({w['bytes']:,} bytes)")
    return 0


def _fetch(client: httpx.Client, path: str, out: Path, doing: str) -> int:
    """Stream ``path`` into ``out`` (through ``out.part``, renamed once whole); its size."""
    with client.stream("GET", path) as response:
        if response.status_code >= 400:
            response.read()
            checked(response, doing)
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(out.name + ".part")
        size = 0
        try:
            with open(part, "wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
                    size += len(chunk)
            os.replace(part, out)
        finally:
            part.unlink(missing_ok=True)
    return size

