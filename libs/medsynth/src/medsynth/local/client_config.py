"""Where the api is, which key to send and which project to name: what the `medsynth` resource
commands (and ``ingest``, ``study run``) read before they talk to a service.

Each value comes from, in order: the command line where it has a flag (``--url``, ``--project``;
never the key, which ``ps`` and shell histories would show), the environment (``MEDSYNTH_API_URL``,
``MEDSYNTH_API_KEY``, ``MEDSYNTH_PROJECT``), the config file, then the default (the local stack's api,
no project header). The config file is ``MEDSYNTH_CONFIG``, else
``$XDG_CONFIG_HOME/medsynth/config.toml`` (``~/.config/medsynth/config.toml``)::

    # chmod 600 ~/.config/medsynth/config.toml
    api_url = "http://127.0.0.1:8700"
    api_key = "msk_..."
    project = "default"

It may hold a key, so it must be its owner's alone: a file that group or others may read or write
(any mode bit in 0o077), or that another user owns, is refused rather than read.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from medsynth.core.errors import InvalidInput

KEYS = ("api_url", "api_key", "project", "ingest_url")


class UsageError(InvalidInput):
    """The command cannot run as invoked or configured (no key anywhere, an unsafe or unreadable config
    file, flags that do not go together): `medsynth` exits 2, as for an argument it does not understand."""


@dataclass(frozen=True)
class ClientConfig:
    api_url: str
    api_key: str | None
    project: str | None
    ingest_url: str
    config_file: Path

    def require_key(self, role: str) -> str:
        """The key, or a :class:`UsageError` that says where to put one (never the command line)."""
        if not self.api_key:
            raise UsageError(f"no API key: set MEDSYNTH_API_KEY, or api_key in {self.config_file} (mode 0600); "
                             f"make one with: medsynth keys create --project P --role {role}")
        return self.api_key

    def headers(self) -> dict[str, str]:
        return {"X-Medsynth-Project": self.project} if self.project else {}


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    if env.get("MEDSYNTH_CONFIG"):
        return Path(env["MEDSYNTH_CONFIG"]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "medsynth" / "config.toml"


def read_config_file(path: Path) -> dict[str, str]:
    """The file's settings ({} when there is none).

    Raises:
        UsageError: the file may be read or changed by another user, is not TOML, or names an unknown
            setting or a value that is not a string.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read the config file {path}: {exc}") from exc
    if info.st_mode & 0o077 or info.st_uid != os.getuid():
        owner = "" if info.st_uid == os.getuid() else f", owned by uid {info.st_uid}"
        raise UsageError(f"refusing the config file {path}: it may hold an API key and other users may read or change it "
                         f"(mode {stat.S_IMODE(info.st_mode):04o}{owner}); make it yours alone: chmod 600 {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read the config file {path}: {exc}") from exc
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise UsageError(f"the config file {path} has unknown settings {unknown}; known: {', '.join(KEYS)}")
    wrong = sorted(k for k, v in data.items() if not isinstance(v, str))
    if wrong:
        raise UsageError(f"the config file {path}: {', '.join(wrong)} should be strings (in quotes)")
    return data


def load_client_config(*, url: str | None = None, project: str | None = None,
                       env: Mapping[str, str] = os.environ) -> ClientConfig:
    """Flags, then the environment, then the config file, then the local stack's defaults."""
    path = config_path(env)
    file = read_config_file(path)

    def pick(flag: str | None, variable: str, key: str) -> str | None:
        return flag or env.get(variable) or file.get(key) or None

    api_url = pick(url, "MEDSYNTH_API_URL", "api_url")
    ingest_url = pick(None, "MEDSYNTH_INGEST_URL", "ingest_url")
    if api_url is None or ingest_url is None:
        from medsynth.core.settings import load_settings

        base = load_settings().stack_base_port
        api_url = api_url or f"http://127.0.0.1:{base}"
        ingest_url = ingest_url or f"http://127.0.0.1:{base + 1}"
    return ClientConfig(api_url=api_url.rstrip("/"), api_key=pick(None, "MEDSYNTH_API_KEY", "api_key"),
                        project=pick(project, "MEDSYNTH_PROJECT", "project"), ingest_url=ingest_url.rstrip("/"),
                        config_file=path)
