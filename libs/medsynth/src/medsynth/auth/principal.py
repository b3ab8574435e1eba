"""Roles, and the authenticated caller: who it is and which roles it holds in which projects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from medsynth.core.errors import Forbidden, InvalidInput
from medsynth.store.projects import DEFAULT_PROJECT

PROJECT_HEADER = "X-Medsynth-Project"


class Role(str, Enum):
    uploader = "uploader"      # push scans, nothing else: a PACS gateway, a modality script
    researcher = "researcher"  # views, generators, cohorts, runs, evaluations, downloads
    viewer = "viewer"          # reports and metrics
    admin = "admin"            # projects, keys, the audit trail


ALL_ROLES = frozenset(Role)


@dataclass(frozen=True)
class Principal:
    """``actor`` names the caller in the audit trail: ``key:<key id>``, ``oidc:<subject>`` or
    ``development`` (authentication off). ``grants`` maps project → roles; ``every_project`` is
    the development caller's, who holds every role everywhere."""

    actor: str
    grants: Mapping[str, frozenset[Role]] = field(default_factory=dict)
    key_id: str | None = None
    every_project: bool = False

    def projects(self) -> list[str]:
        return sorted(self.grants)

    def roles_in(self, project: str) -> frozenset[Role]:
        return ALL_ROLES if self.every_project else self.grants.get(project, frozenset())

    def all_roles(self) -> frozenset[Role]:
        return ALL_ROLES if self.every_project else frozenset().union(*self.grants.values())

    def project_for(self, requested: str | None) -> str:
        """The project a request acts on: the one named in the ``X-Medsynth-Project`` header, or the
        caller's only project. A project the caller holds no role in is refused (403), whether or
        not it exists, so the answer says nothing about other projects."""
        if requested:
            if self.every_project or requested in self.grants:
                return requested
            mine = ", ".join(self.projects()) or "none"
            raise Forbidden(f"these credentials hold no role in project {requested!r} (their projects: {mine})")
        if self.every_project:
            return DEFAULT_PROJECT
        if len(self.grants) == 1:
            return next(iter(self.grants))
        if not self.grants:
            raise Forbidden("these credentials hold no role in any project")
        raise InvalidInput(f"these credentials hold roles in several projects ({', '.join(self.projects())}); "
                           f"name one in the {PROJECT_HEADER} header")


DEVELOPMENT = Principal(actor="development", every_project=True)
