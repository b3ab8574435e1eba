"""Administration: projects, API keys and the audit trail (the admin role; listing projects: anyone)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Query, status
from fastapi.concurrency import run_in_threadpool

from medsynth.api.deps import GuardDep, PrincipalDep, ProjectDep
from medsynth.api.pagination import PageDep
from medsynth.api.schemas import (
    AuditPage,
    KeyCreate,
    KeyCreated,
    KeyPublic,
    KeysPublic,
    ProjectCreate,
    ProjectCreated,
    ProjectPublic,
    ProjectsPublic,
)
from medsynth.auth.audit import ChainCheck, matches
from medsynth.auth.principal import Role
from medsynth.core.errors import Conflict, NotFound
from medsynth.store.projects import Project

router = APIRouter(tags=["administration"])


def _public(project: Project, roles) -> ProjectPublic:
    return ProjectPublic(name=project.name, description=project.description, created_at=project.created_at,
                         dicom=project.dicom, roles=sorted(roles, key=lambda r: r.value))


@router.get("/v1/projects", response_model=ProjectsPublic)
def list_projects(guard: GuardDep, principal: PrincipalDep, page: PageDep) -> ProjectsPublic:
    """The caller's projects by name, with its roles in each (never another's), a page at a time."""
    names = guard.projects.names() if principal.every_project else principal.projects()

    def found() -> Iterator[tuple[str, ProjectPublic]]:
        for name in sorted(n for n in names if page.after is None or n > page.after):
            try:
                yield name, _public(guard.projects.get(name), principal.roles_in(name))
            except NotFound:  # a grant in an OIDC token for a project not created (yet)
                continue

    projects, cursor = page.take(found())
    return ProjectsPublic(projects=projects, next_cursor=cursor)


@router.post("/v1/projects", status_code=status.HTTP_201_CREATED, response_model=ProjectCreated)
def create_project(body: ProjectCreate, guard: GuardDep, principal: PrincipalDep) -> ProjectCreated:
    """A new project (409 if the name is taken), with a first admin key for it, shown once."""
    project = guard.projects.create(body.name, description=body.description, created_by=principal.actor, dicom=body.dicom)
    key, token = guard.keys.create(project.name, Role.admin, name=f"first admin key of {project.name}",
                                   created_by=principal.actor)
    return ProjectCreated(project=_public(project, {Role.admin}), admin_key=KeyCreated(**KeyPublic.of(key).model_dump(), token=token))


@router.get("/v1/keys", response_model=KeysPublic)
def list_keys(guard: GuardDep, project: ProjectDep, page: PageDep) -> KeysPublic:
    """The project's keys by id (never their secrets, which are not kept), a page at a time."""
    keys, cursor = page.take(guard.keys.listing(project, after=page.after))
    return KeysPublic(keys=[KeyPublic.of(k) for k in keys], next_cursor=cursor)


@router.post("/v1/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
def create_key(body: KeyCreate, guard: GuardDep, principal: PrincipalDep, project: ProjectDep) -> KeyCreated:
    """A key of the project with one role; its token is in this answer and nowhere else."""
    key, token = guard.keys.create(project, body.role, name=body.name, expires_in_days=body.expires_in_days,
                                   created_by=principal.actor)
    return KeyCreated(**KeyPublic.of(key).model_dump(), token=token)


@router.delete("/v1/keys/{key_id}", response_model=KeyPublic)
def revoke_key(key_id: str, guard: GuardDep, principal: PrincipalDep, project: ProjectDep) -> KeyPublic:
    """Revoke a key of the project (404 for a key of another project). Every service stops taking it
    within MEDSYNTH_KEY_CACHE_S."""
    return KeyPublic.of(guard.keys.revoke(project, key_id, by=principal.actor))


@router.get("/v1/audit", response_model=AuditPage)
async def read_audit(
    guard: GuardDep,
    project: ProjectDep,
    page: PageDep,
    since_seq: int = Query(0, ge=0, description="Only records after this number."),
    actor: str | None = Query(None, max_length=300),
    action: str | None = Query(None, max_length=100),
    outcome: int | None = Query(None, ge=100, le=599, description="An HTTP status, e.g. 403."),
    unattributed: bool = Query(False, description="Also refusals that named no project (bad or missing credentials)."),
) -> AuditPage:
    """The project's audit records, oldest first, filtered, a page at a time (from ``cursor`` or after ``since_seq``)."""
    filters = {"actor": actor, "action": action, "outcome": outcome}
    start = max(since_seq, int(page.after) if page.after else 0)

    def read() -> tuple[list, str | None]:
        mine = ((f"{r.seq:012d}", r) for r in guard.audit.iter_records(since_seq=start)
                if (r.project == project or (unattributed and r.project is None)) and matches(r, filters))
        return page.take(mine)

    records, cursor = await run_in_threadpool(read)
    return AuditPage(records=records, count=len(records), next_seq=records[-1].seq if records else start, next_cursor=cursor)


@router.get("/v1/audit/verify", response_model=ChainCheck, responses={409: {"description": "The chain is broken."}})
async def verify_audit(guard: GuardDep) -> ChainCheck:
    """Walk the whole chain (every project's records: the chain is one). 409 names the first broken record."""
    check = await run_in_threadpool(guard.audit.verify)
    if not check.ok:
        raise Conflict(f"the audit trail is broken at record {check.broken_at}: {check.reason}")
    return check
