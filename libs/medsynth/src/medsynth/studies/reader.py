"""Reader studies (a visual Turing test, seed 000): readers see real and synthetic images one at a
time in an order of their own and say which each is; the results say whether they could tell.

A reader study is made from a finished cohort: ``n_synthetic`` of its images and ``n_real`` real
images of its generator's view (the held-out test patients where there are enough, so that no
reader sees a training image a synthetic one could copy). Items are stored as PNGs under random
names, with the truth apart. Each reader gets a token, shown once; the store keeps its SHA-256
under ``auth/readers/`` (root store: a token names its project). An answer is written
create-if-absent, so a reader answers each item once.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import uuid
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medsynth.commands.requests import Id, Name, Seed
from medsynth.bus.messages import JobKind
from medsynth.core.clock import utcnow
from medsynth.core.errors import Conflict, InvalidInput, NotFound, Unauthorized
from medsynth.datasets.views import load_view, load_view_split
from medsynth.jobs.artifacts import cohort_arrays
from medsynth.jobs.lookup import finished
from medsynth.jobs.records import JobRecords
from medsynth.metrics.reader import reader_performance
from medsynth.store.projects import project_store
from medsynth.store import ObjectStore
from medsynth.studies.runner import load_study

TOKEN_PREFIX = "msr_"
SCALE = 4  # each pixel shown as 4 x 4: a 64-pixel slice is 256 pixels on screen


class ReaderStudyCreate(BaseModel):
    """Real and synthetic images for readers to tell apart."""

    model_config = ConfigDict(extra="forbid")
    cohort_id: Id
    n_real: int = Field(20, ge=1, le=500)
    n_synthetic: int = Field(20, ge=1, le=500)
    readers: list[Name] = Field(min_length=1, max_length=50, description="A name per reader; each gets a token.")
    rate_quality: bool = Field(False, description="Ask each reader for a quality rating (1-5) with each answer.")
    study_id: Id | None = Field(None, description="The study whose report shows the results.")
    seed: Seed = 0


class ReaderAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: str = Field(min_length=1, max_length=64)
    answer: str = Field(pattern="^(real|synthetic)$")
    quality: int | None = Field(None, ge=1, le=5)


def _prefix(study_id: str) -> str:
    return f"reader-studies/{study_id}/"


def _token_key(token: str) -> str:
    return f"auth/readers/{hashlib.sha256(token.encode()).hexdigest()}.json"


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    pixels = (np.clip(np.asarray(image, dtype=np.float32).squeeze(), 0, 1) * 255).round().astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).resize((pixels.shape[1] * SCALE, pixels.shape[0] * SCALE), Image.NEAREST).save(out, format="PNG")
    return out.getvalue()


def create_reader_study(body: ReaderStudyCreate, root: ObjectStore, project: str, records: JobRecords) -> dict[str, Any]:
    store = project_store(root, project)
    cohort = finished(records, body.cohort_id, JobKind.sample_cohort)
    generator = finished(records, cohort.spec["generator_id"], JobKind.train_generator)
    if len(set(body.readers)) != len(body.readers):
        raise InvalidInput("reader names must differ")
    if body.study_id is not None:
        load_study(store, body.study_id)
    _, fake, _ = cohort_arrays(store, records, body.cohort_id, limit=body.n_synthetic)
    if len(fake) < body.n_synthetic:
        raise InvalidInput(f"cohort {body.cohort_id} has {len(fake)} images; n_synthetic is {body.n_synthetic}")
    view = load_view(store, generator.spec["dataset"], generator.spec["view_id"])
    split, real = "test", load_view_split(store, view, "test")
    if len(real.get("images", [])) < body.n_real:
        split, real = "train", load_view_split(store, view, "train")
    if len(real.get("images", [])) < body.n_real:
        raise InvalidInput(f"the generator's view has {len(real.get('images', []))} real images in its largest split; n_real is {body.n_real}")
    rng = np.random.default_rng(body.seed)
    picked = rng.choice(len(real["images"]), body.n_real, replace=False)
    study_id = f"reader-{uuid.uuid4().hex[:16]}"
    truth: dict[str, str] = {}
    for image, label in [*((real["images"][i], "real") for i in picked), *((f, "synthetic") for f in fake)]:
        item = secrets.token_hex(8)
        truth[item] = label
        store.put_bytes(f"{_prefix(study_id)}items/{item}.png", _png(image), content_type="image/png")
    items = list(truth)
    readers, tokens = {}, []
    for name in body.readers:
        order = [items[i] for i in rng.permutation(len(items))]
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        readers[name] = {"order": order}
        root.put_json(_token_key(token), {"project": project, "reader_study_id": study_id, "reader": name})
        tokens.append({"reader": name, "token": token, "page": f"/v1/reader-studies/{study_id}/read?token={token}"})
    record = {"reader_study_id": study_id, "cohort_id": body.cohort_id, "generator_id": generator.job_id, "study_id": body.study_id,
              "real_source": f"view {generator.spec['view_id']}, {split} split", "n_real": body.n_real, "n_synthetic": body.n_synthetic,
              "rate_quality": body.rate_quality, "created_at": utcnow().isoformat(), "readers": readers}
    store.put_json(f"{_prefix(study_id)}truth.json", truth)
    store.put_json(f"{_prefix(study_id)}study.json", record)
    return {**{k: v for k, v in record.items() if k != "readers"}, "readers": tokens,
            "note": "each token is shown once: hand each reader their page link"}


class Reader(BaseModel):
    project: str
    reader_study_id: str
    reader: str


def reader_of(root: ObjectStore, token: str | None, study_id: str) -> Reader:
    """The reader a token belongs to; 401 for a missing, forged or other study's token."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        raise Unauthorized("a reader token is needed (the link you were given)")
    try:
        reader = Reader.model_validate(root.get_json(_token_key(token)))
    except NotFound:
        raise Unauthorized("this reader token is not valid") from None
    if reader.reader_study_id != study_id:
        raise Unauthorized("this reader token is for another reader study")
    return reader


def _record(store: ObjectStore, study_id: str) -> dict[str, Any]:
    try:
        return store.get_json(f"{_prefix(study_id)}study.json")
    except (NotFound, InvalidInput):
        raise NotFound(f"unknown reader study {study_id!r}") from None


def _answers(store: ObjectStore, study_id: str, reader: str) -> dict[str, dict[str, Any]]:
    prefix = f"{_prefix(study_id)}answers/{reader}/"
    return {k[len(prefix):-len(".json")]: store.get_json(k) for k in store.list(prefix) if k.endswith(".json")}


def next_item(store: ObjectStore, reader: Reader) -> dict[str, Any]:
    record = _record(store, reader.reader_study_id)
    order = record["readers"][reader.reader]["order"]
    done = _answers(store, reader.reader_study_id, reader.reader)
    left = [item for item in order if item not in done]
    base = {"answered": len(done), "total": len(order), "rate_quality": record["rate_quality"], "reader": reader.reader}
    if not left:
        return {**base, "done": True}
    return {**base, "done": False, "item": left[0], "image": f"/v1/reader-studies/{reader.reader_study_id}/items/{left[0]}.png"}


def item_png(store: ObjectStore, reader: Reader, item: str) -> bytes:
    record = _record(store, reader.reader_study_id)
    if item not in record["readers"][reader.reader]["order"]:
        raise NotFound(f"no item {item!r} in this reader study")
    return store.get_bytes(f"{_prefix(reader.reader_study_id)}items/{item}.png")


def answer(store: ObjectStore, reader: Reader, body: ReaderAnswer) -> dict[str, Any]:
    record = _record(store, reader.reader_study_id)
    if body.item not in record["readers"][reader.reader]["order"]:
        raise InvalidInput(f"no item {body.item!r} in this reader study")
    if record["rate_quality"] and body.quality is None:
        raise InvalidInput("this reader study asks for a quality rating (1-5) with each answer")
    entry = {"answer": body.answer, "quality": body.quality, "at": utcnow().isoformat()}
    key = f"{_prefix(reader.reader_study_id)}answers/{reader.reader}/{body.item}.json"
    import json

    if not store.put_if_absent(key, json.dumps(entry).encode(), content_type="application/json"):
        raise Conflict(f"item {body.item} is already answered; an answer cannot be changed")
    return next_item(store, reader)


def reader_results(store: ObjectStore, study_id: str, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per reader and pooled: accuracy, sensitivity (synthetic called synthetic), specificity (real
    called real) with exact binomial intervals, and mean quality ratings by truth."""
    record = record or _record(store, study_id)
    truth = store.get_json(f"{_prefix(study_id)}truth.json")
    per_reader, pooled, ratings = {}, [], {"real": [], "synthetic": []}
    for name, reader in record["readers"].items():
        given = _answers(store, study_id, name)
        pairs = [(truth[item], a["answer"]) for item, a in given.items()]
        pooled += pairs
        for item, a in given.items():
            if a.get("quality") is not None:
                ratings[truth[item]].append(a["quality"])
        per_reader[name] = {"answered": len(given), "total": len(reader["order"]), **reader_performance(pairs)}
    return {"reader_study_id": study_id, "cohort_id": record["cohort_id"], "study_id": record.get("study_id"),
            "real_source": record["real_source"], "n_real": record["n_real"], "n_synthetic": record["n_synthetic"],
            "readers": per_reader, "pooled": reader_performance(pooled),
            "mean_quality": {k: (float(np.mean(v)) if v else None) for k, v in ratings.items()}}


def reader_studies_of(store: ObjectStore, study_id: str) -> list[dict[str, Any]]:
    """The results of every reader study that names study ``study_id``."""
    ids = sorted({k.split("/")[1] for k in store.list("reader-studies/") if k.endswith("/study.json")})
    records = {i: _record(store, i) for i in ids}
    return [reader_results(store, i, r) for i, r in records.items() if r.get("study_id") == study_id]
