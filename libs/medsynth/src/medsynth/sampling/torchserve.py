"""A small client for TorchServe's management and inference APIs.

:class:`TorchServeClient` registers ``.mar`` archives (idempotently), unregisters them, and calls the sampler handler
(``services/sampler/handler.py``) of a server with token authorization on: it reads the management
and inference keys from the server's ``key_file.json`` and sends them as ``Authorization: Bearer``,
renewing an expired one through the token API. Every failure to reach TorchServe, and every 5xx or
unknown-model answer, is a :class:`SamplerUnavailable` naming the URL. :class:`LoadedModels` keeps the
generators loaded in a server to a bound, unloading the least recently used. The server itself runs in
the cluster (the chart) or, on one machine, under :mod:`medsynth.local.torchserve`.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from medsynth.core.errors import InvalidInput, MedsynthError
from medsynth.runtime.telemetry import TORCHSERVE_REQUESTS, TORCHSERVE_SECONDS
from medsynth.sampling.archive import check_model_name

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT_S = 300.0


class SamplerUnavailable(MedsynthError):
    """The sampling backend (TorchServe) cannot be reached or cannot serve; the message names the URL."""


def _healthy(http: httpx.Client, url: str, headers: Mapping[str, str] | None = None) -> bool:
    try:
        response = http.get(url, headers=headers)
        return response.status_code == 200 and response.json().get("status") == "Healthy"
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


class TorchServeClient:
    """The management and inference APIs of one TorchServe server. ``key_file`` is the server's
    ``key_file.json`` (token authorization); without one, requests go without a token, which only a
    server with token authorization disabled answers."""

    def __init__(self, inference_url: str, management_url: str, *, timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                 key_file: str | Path | None = None) -> None:
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.key_file = Path(key_file) if key_file else None
        self._keys: dict[str, str] = {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TorchServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TorchServeClient({self.inference_url!r}, {self.management_url!r})"

    def ping(self) -> bool:
        """Whether the inference API answers Healthy (never raises)."""
        url = f"{self.inference_url}/ping"
        try:
            headers = {"Authorization": f"Bearer {self._key('inference')}"} if self.key_file is not None else {}
        except SamplerUnavailable:  # no key file yet: the server is not up
            return False
        if _healthy(self._http, url, headers):
            return True
        self._keys = {}  # a restarted server has written new keys: read them at the next call
        return False

    def register(
        self,
        mar: str | Path,
        model_name: str,
        *,
        initial_workers: int = 1,
        response_timeout_s: int | None = None,
    ) -> bool:
        """Register an archive and wait for its workers (``synchronous=true``). Returns ``True`` if
        registered now, ``False`` if ``model_name`` was already registered (nothing changes then).

        ``mar`` is a file name in the server's model store, an ``http(s)://`` or ``file://`` URL, or
        a :class:`~pathlib.Path` (sent as a ``file://`` URL; the server must be able to read it).
        """
        check_model_name(model_name)
        if initial_workers < 1:
            raise InvalidInput(f"initial_workers must be at least 1, got {initial_workers}.")
        params: dict[str, Any] = {
            "url": _archive_url(mar),
            "model_name": model_name,
            "initial_workers": initial_workers,
            "synchronous": "true",
        }
        if response_timeout_s is not None:
            params["response_timeout"] = int(response_timeout_s)
        url = f"{self.management_url}/models"
        began = time.monotonic()
        response = self._request("POST", url, params=params)
        if response.status_code == 409 and self.is_registered(model_name):
            log.info("model %r is already registered at %s", model_name, self.management_url)
            return False
        _raise_for_status(response, url, f"registering {params['url']!r} as {model_name!r}")
        log.info(
            "registered model %r from %s at %s in %.1f s (workers ready)",
            model_name, params["url"], self.management_url, time.monotonic() - began,
        )  # fmt: skip
        return True

    def unregister(self, model_name: str) -> bool:
        """Unregister ``model_name`` (its workers stop: on a GPU, each held a CUDA context and the
        generator's weights). Returns ``False`` if it was not registered."""
        url = f"{self.management_url}/models/{check_model_name(model_name)}"
        response = self._request("DELETE", url)
        if response.status_code == 404:
            return False
        _raise_for_status(response, url, f"unregistering model {model_name!r}")
        log.info("unregistered model %r at %s", model_name, self.management_url)
        return True

    def models(self) -> list[str]:
        """The names of the models registered (every page of ``GET /models``)."""
        url, names, token = f"{self.management_url}/models", [], None
        while True:
            response = self._request("GET", url, params={"limit": 100, **({"next_page_token": token} if token else {})})
            _raise_for_status(response, url, "listing models")
            try:
                body = response.json()
                names += [m["modelName"] for m in body.get("models", [])]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise SamplerUnavailable(f"TorchServe at {url} answered the model list with {response.text[:200]!r}") from exc
            token = body.get("nextPageToken")
            if not token:
                return names

    def is_registered(self, model_name: str) -> bool:
        url = f"{self.management_url}/models/{check_model_name(model_name)}"
        response = self._request("GET", url)
        if response.status_code == 404:
            return False
        _raise_for_status(response, url, f"describing model {model_name!r}")
        return True

    def infer(self, model_name: str, payload: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """POST ``payload`` (the sampler handler's JSON request) and decode its ``.npz`` answer
        into ``(images, masks)``."""
        url = f"{self.inference_url}/predictions/{check_model_name(model_name)}"
        response = self._post_json(url, payload, model_name)
        return _decode_npz(response.content, url)

    def describe(self, model_name: str, mode: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The handler's ``describe`` answer for a sampling ``mode``: generator spec, mode, noise shapes,
        weights fingerprint, worker software. A mode the generator cannot serve raises :class:`InvalidInput`."""
        url = f"{self.inference_url}/predictions/{check_model_name(model_name)}"
        response = self._post_json(url, {"describe": True, **(mode or {})}, model_name)
        try:
            return json.loads(response.content)
        except ValueError as exc:
            raise SamplerUnavailable(f"TorchServe at {url} answered describe with non-JSON: {response.text[:200]!r}") from exc

    # internals ---------------------------------------------------------------------------------

    def _post_json(self, url: str, payload: Mapping[str, Any], model_name: str) -> httpx.Response:
        response = self._request("POST", url, content=json.dumps(dict(payload)), headers={"Content-Type": "application/json"})
        if response.status_code == 400:
            raise InvalidInput(f"TorchServe model {model_name!r} at {url} rejected the request: {_error_text(response)}")
        _raise_for_status(response, url, f"inference on model {model_name!r}")
        return response

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One call with the API's key; a refused key (expired) is renewed and the call tried again once."""
        api = "management" if url.startswith(self.management_url) else "inference"
        response = self._send(method, url, api, **kwargs)
        if _key_refused(response) and self.key_file is not None:
            self._renew(api)
            response = self._send(method, url, api, **kwargs)
            if _key_refused(response):
                raise SamplerUnavailable(f"TorchServe at {url} refuses the {api} key of {self.key_file}: {_error_text(response)}")
        return response

    def _send(self, method: str, url: str, api: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if self.key_file is not None:
            headers["Authorization"] = f"Bearer {self._key(api)}"
        started = time.perf_counter()
        try:
            response = self._http.request(method, url, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            TORCHSERVE_REQUESTS.labels(api, "unreachable").inc()
            raise _unavailable(url, exc, self._http.timeout.read) from exc
        TORCHSERVE_SECONDS.labels(api).observe(time.perf_counter() - started)
        TORCHSERVE_REQUESTS.labels(api, str(response.status_code)).inc()
        return response

    def _key(self, api: str) -> str:
        if api not in self._keys:
            self._read_keys()
        return self._keys[api]

    def _read_keys(self) -> None:
        assert self.key_file is not None
        try:
            raw = json.loads(self.key_file.read_text())
            self._keys = {"management": raw["management"]["key"], "inference": raw["inference"]["key"], "api": raw["API"]["key"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SamplerUnavailable(f"TorchServe's key file {self.key_file} cannot be read: {exc}") from exc

    def _renew(self, api: str) -> None:
        """Ask the token API for a fresh ``api`` key (TorchServe rewrites its key file), then reread it."""
        self._read_keys()  # another client may have renewed it already
        url = f"{self.management_url}/token"
        try:
            self._http.get(url, params={"type": api}, headers={"Authorization": f"Bearer {self._keys['api']}"})
        except httpx.HTTPError as exc:
            raise _unavailable(url, exc, self._http.timeout.read) from exc
        self._read_keys()
        log.info("renewed the TorchServe %s key", api)


class LoadedModels:
    """The generators loaded in one TorchServe, kept to ``capacity`` by least recent use.

    Each registered model holds a worker process — on a GPU a CUDA context and the generator's weights —
    until it is unregistered, so a sampler that registered every generator it was ever asked for would
    fill the GPU. :meth:`use` registers a model when needed and then unregisters the least recently used
    others beyond ``capacity``; models the server holds that this process never used (registered before
    it started) count as the least recent. Recency is this process's: samplers sharing one TorchServe
    may unregister a model another is using, whose next request then fails as unavailable (the job is
    retried and registers it again); the chart gives each sampler its own TorchServe.
    """

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise InvalidInput(f"capacity must be an integer of at least 1, got {capacity!r}.")
        self.capacity = capacity
        self._used: dict[str, float] = {}  # model name → last use (monotonic), oldest first

    def use(self, client: TorchServeClient, model_name: str, register: Callable[[], object]) -> list[str]:
        """Mark ``model_name`` used now; unregister the least recently used others beyond ``capacity``
        (counting ``model_name``), then call ``register()`` if ``client``'s server lacks it — so the GPU
        never holds more than ``capacity`` generators. Returns the names unregistered."""
        self._used.pop(model_name, None)
        self._used[model_name] = time.monotonic()
        loaded = client.models()
        order = {name: k for k, name in enumerate(self._used)}
        others = sorted((m for m in loaded if m != model_name), key=lambda m: order.get(m, -1))
        evicted = []
        for name in others[: max(0, len(others) + 1 - self.capacity)]:
            if client.unregister(name):
                evicted.append(name)
            self._used.pop(name, None)
        if evicted:
            log.info("unloaded %s from %s: at most %d generators stay loaded", evicted, client.management_url, self.capacity)
        if model_name not in loaded:
            register()
        return evicted


def _unavailable(url: str, exc: httpx.HTTPError, read_timeout: float | None) -> SamplerUnavailable:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return SamplerUnavailable(f"TorchServe at {url} is unreachable ({detail}); is it running?")
    if isinstance(exc, httpx.TimeoutException):
        return SamplerUnavailable(f"TorchServe at {url} did not answer within {read_timeout} s ({detail}).")
    return SamplerUnavailable(f"TorchServe at {url} failed ({detail}).")


def _archive_url(mar: str | Path) -> str:
    if isinstance(mar, Path):
        return mar.resolve().as_uri()
    return mar


def _key_refused(response: httpx.Response) -> bool:
    """TorchServe 0.12 answers a missing, wrong or expired key with 400 ("Token Authorization failed. Token
    either incorrect, expired, or not provided correctly"; "Authentication" on some routes)."""
    return response.status_code == 401 or (response.status_code == 400 and "Token either incorrect, expired" in response.text)


def _raise_for_status(response: httpx.Response, url: str, doing: str) -> None:
    if response.is_success:
        return
    raise SamplerUnavailable(f"TorchServe at {url} failed {doing}: HTTP {response.status_code}: {_error_text(response)}")


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)[:500]
    return str(body)[:500]


def _decode_npz(content: bytes, url: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as npz:
            images, masks = npz["images"], npz["masks"]
    except (ValueError, KeyError, OSError, EOFError) as exc:
        raise SamplerUnavailable(f"TorchServe at {url} answered with something that is not the sampler's npz: {exc}") from exc
    return images, masks
