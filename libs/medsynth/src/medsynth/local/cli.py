"""The `medsynth` command line.

Exit status: 0 done; 1 refused or failed (the api's message, or what went wrong, on stderr); 2 a usage
error (arguments it does not understand, no API key anywhere, an unsafe config file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medsynth import __version__
from medsynth.core.errors import MedsynthError
from medsynth.local.client_config import UsageError
from medsynth.local.demo import DemoSettings
from medsynth.local.resources import RESOURCES


def _stack(args: argparse.Namespace) -> int:
    from medsynth.local import stack
    from medsynth.core.settings import load_settings

    settings = load_settings()
    if args.action == "up":
        stack_file = stack.up(settings, names=args.services, timeout=args.timeout)
        print(f"stack is up; MEDSYNTH_KAFKA_BOOTSTRAP={stack_file.bootstrap}; logs in {settings.home.resolve() / 'logs'}")
    elif args.action == "down":
        stack.down(settings)
    else:
        rows = stack.status(settings)
        if not rows:
            print("no stack is running")
            return 1
        print(f"{'name':<10} {'pid':>7} {'port':>5} {'restarts':>8}  state")
        for r in rows:
            state = ("running" if r["alive"] else r["state"]) + (f", {r['ready']}" if r["port"] and r["alive"] else "")
            if r["state"] == "crash-loop":
                state += f", CRASH LOOP (last exit status {r['last_exit']}; see {r['log']})"
            print(f"{r['name']:<10} {r['pid'] or '-':>7} {r['port'] or '':>5} {r['restarts']:>8}  {state}")
        if any(r["name"] == "ingest" for r in rows):
            host, port, ae_title = stack.dicom_listener(settings)
            if settings.dicom_peers:
                peers = ", ".join(f"{p.ae_title} -> {p.project}/{p.dataset}" for p in settings.dicom_peers)
                print(f"DICOM C-STORE SCP: AE title {ae_title} at {host}:{port}; calling AE titles allowed: {peers}")
            else:
                print("DICOM C-STORE SCP: not listening (no MEDSYNTH_DICOM_PEERS: no calling AE title is allowed)")
        return 0 if all(r["alive"] and r["ready"] in ("ready", "-") for r in rows) else 1
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from medsynth.local.client_config import load_client_config
    from medsynth.local.ingest_client import ingest_folder, patient_mapping

    config = load_client_config()
    url = args.url or config.ingest_url
    api_key = args.api_key or config.require_key("uploader")
    patient_of = patient_mapping(Path(args.patients) if args.patients else None, args.patient_pattern)
    summary = ingest_folder(Path(args.folder), args.dataset, url, api_key=api_key, workers=args.workers, patient_of=patient_of,
                            on_error=args.on_error)
    print("\n".join(summary.lines()))
    return 0 if summary.as_sent else 1


def _topics(args: argparse.Namespace) -> int:
    from medsynth.bus.admin import ensure_topics
    from medsynth.bus.client import Bus
    from medsynth.bus.topics import all_topics
    from medsynth.core.settings import load_settings

    settings = load_settings()
    if not settings.kafka_bootstrap:
        raise UsageError("topics needs MEDSYNTH_KAFKA_BOOTSTRAP (the broker to create them on)")
    bus = Bus(settings, client_id="topics")
    try:
        created = ensure_topics(bus, all_topics(settings.topic_prefix))
    finally:
        bus.close()
    wanted = [name for name, _ in all_topics(settings.topic_prefix)]
    print(f"{len(wanted)} topics on {settings.kafka_bootstrap}: {len(created)} created, {len(wanted) - len(created)} already there")
    return 0


def _study(args: argparse.Namespace) -> int:
    from medsynth.local.study_client import main_run

    return main_run(args)


def _root_store():
    """The store the stack's services use (``medsynth keys`` / ``projects`` / ``audit`` write and read
    it directly: whoever holds the store's credentials is the root of trust)."""
    from medsynth.core.settings import load_settings
    from medsynth.local.stack import store_settings
    from medsynth.store import open_store

    return open_store(store_settings(load_settings()))


def _keys(args: argparse.Namespace) -> int:
    from medsynth.auth.keys import ApiKeys
    from medsynth.store.projects import Projects

    keys = ApiKeys(_root_store())
    if args.action == "create":
        if not args.role:
            raise UsageError("keys create needs --role (uploader, researcher, viewer or admin)")
        Projects(keys.root).get(args.project)  # an unknown project is an error, not a key for nothing
        key, token = keys.create(args.project, args.role, name=args.name or "", created_by="cli",
                                 expires_in_days=None if args.expires_days == 0 else args.expires_days)
        expiry = key.expires_at.isoformat(timespec="seconds") if key.expires_at else "never"
        print(f"created key {key.key_id}: project {key.project}, role {key.role.value}, expires {expiry}", file=sys.stderr)
        print("the key (shown this once; send it as Authorization: Bearer <key>):", file=sys.stderr)
        print(token)
    elif args.action == "list":
        print(f"{'key id':<18} {'role':<11} {'state':<8} {'expires':<20} name")
        for key in keys.list(args.project):
            expiry = key.expires_at.isoformat(timespec="seconds")[:19] if key.expires_at else "never"
            print(f"{key.key_id:<18} {key.role.value:<11} {key.state():<8} {expiry:<20} {key.name}")
    else:
        if not args.key_id:
            raise UsageError("keys revoke needs the key's id")
        key = keys.revoke(args.project, args.key_id, by="cli")
        print(f"key {key.key_id} of project {key.project} is revoked")
    return 0


def _projects(args: argparse.Namespace) -> int:
    from medsynth.store.projects import DEFAULT_PROJECT, DicomOptions, Projects
    from medsynth.dicom.deid import deid_policy

    projects = Projects(_root_store())
    if args.action == "create":
        if not args.name:
            raise UsageError("projects create needs a name")
        options = DicomOptions(retain_dates=args.retain_dates, allow_burned_in=args.allow_burned_in,
                               time_series=args.time_series)
        project = projects.create(args.name, description=args.description or "", created_by="cli", dicom=options)
        print(f"created project {project.name}")
    elif args.action == "deid-key":
        # the hospital's way back from pseudonyms: HMAC-SHA256(key, "patient\0" + PatientID), "P" + first 20 hex digits
        print(deid_policy(_root_store(), args.name or DEFAULT_PROJECT).key.hex())
    else:
        for name in projects.names():
            print(name)
    return 0


def _audit(args: argparse.Namespace) -> int:
    from medsynth.auth.audit import AuditLog

    log = AuditLog(_root_store())
    if args.action == "verify":
        check = log.verify()
        print(f"audit trail: {check.records} records, " + ("intact" if check.ok else f"BROKEN at record {check.broken_at}: {check.reason}"))
        return 0 if check.ok else 1
    for r in log.records(since_seq=args.since):
        if args.project is None or r.project == args.project:
            print(f"{r.seq:>8} {r.time.isoformat(timespec='seconds')[:19]} {r.outcome} {r.actor:<22} {r.project or '-':<12} "
                  f"{r.action:<22} {' '.join(f'{k}={v}' for k, v in r.resource.items())} {r.reason}")
    return 0


def _phantoms(args: argparse.Namespace) -> int:
    from medsynth.datasets.phantoms import write_phantom_dataset

    names = write_phantom_dataset(Path(args.out), n=args.n, seed=args.seed)
    print(f"wrote {len(names)} phantom cases to {args.out}/imagesTr and {args.out}/labelsTr")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from medsynth.core.settings import load_settings
    from medsynth.local.demo import run_demo

    knobs = DemoSettings(**{k: v for k, v in vars(args).items() if k in DemoSettings.__dataclass_fields__ and v is not None})
    run_demo(load_settings(), Path(args.data) if args.data else None, dataset=args.dataset, knobs=knobs)
    return 0


def _generators(args: argparse.Namespace) -> int:
    """``list --store``: the trained generators in the store (no stack needed); ``families``: what can be trained."""
    import json

    from medsynth.generators.registry import FAMILIES

    if args.action == "families":
        if args.json:
            print(json.dumps({"families": [f.describe() for f in FAMILIES.values()]}, indent=2, default=str))
            return 0
        for family in FAMILIES.values():
            info = family.describe()
            print(f"{info['family']:<10} {info['title']}")
            print(f"{'':<10} sizes {info['image_sizes']}, mask sources {info['mask_sources']}, losses {info['losses']}")
            if args.verbose:
                for name, schema in info["options"].items():
                    print(f"{'':<12}{name}: {schema.get('description', '')} (default {json.dumps(schema.get('default'))})")
        return 0
    from medsynth.core.errors import InvalidInput
    from medsynth.generators.entry import load_entry
    from medsynth.store.projects import project_store

    store = project_store(_root_store(), args.project or "default")
    entries = []
    for key in sorted(k for k in store.list("generators/") if k.endswith("/generator.json")):
        try:
            entries.append(load_entry(store, key))
        except InvalidInput as exc:
            print(exc, file=sys.stderr)
    if args.json:
        print(json.dumps({"generators": [e.stored() for e in entries]}, indent=2, default=str))
        return 0
    if not entries:
        print("no trained generators in the store")
        return 0
    print(f"{'generator':<36} {'family':<10} {'dataset':<16} {'steps':>7}  {'mask sources':<26} registered")
    for e in entries:
        sources = ",".join(s.value for s in e.mask_sources)
        print(f"{e.generator_id:<36} {e.family:<10} {e.dataset:<16} {e.steps_done:>7}  {sources:<26} {e.registered_at.isoformat()[:19]}")
    return 0


def _export_nnunet(args: argparse.Namespace) -> int:
    """``cohorts export-nnunet``: a cohort (and the real training slices) as an nnU-Net v2 raw dataset, from the store."""
    from medsynth.local.nnunet_export import export_cohort
    from medsynth.store.projects import project_store

    store = project_store(_root_store(), args.project or "default")
    done = export_cohort(store, args.id, Path(args.out), dataset_id=args.dataset_id, name=args.name, with_real=args.with_real)
    labels = ", ".join(f"{v} {n}" for n, v in done.labels.items())
    print(f"wrote {done.folder}: {done.synthetic} synthetic + {done.real} real cases; labels {labels}")
    if done.folds:
        print(f"splits_final.json: {done.folds} folds by patient (nnUNetv2_plan_and_preprocess takes it over for training)")
    print(f"check it: nnUNet_raw={done.folder.parent} nnUNetv2_plan_and_preprocess -d {args.dataset_id} --verify_dataset_integrity")
    return 0


RESOURCE_RETRY_S = 20.0  # a stack that is down is waited for this long, not the 10 minutes a long upload may wait out
ACTION_HELP = {"list": "list them (a table; --json: the api's JSON)", "show": "one of them, by id",
               "create": "request one (body from --file YAML/JSON and/or the flags)", "cancel": "cancel its job",
               "download": "download it"}


def _resource(args: argparse.Namespace) -> int:
    """``medsynth <resource> <action>`` over the api (:mod:`medsynth.local.resources`)."""
    import httpx

    from medsynth.local.api_client import RetryPolicy, api_client
    from medsynth.local.client_config import load_client_config
    from medsynth.local.resources import Request, run_action

    resource = RESOURCES[args.command]
    config = load_client_config(url=args.url, project=args.project)
    request = Request(resource, args.action, id=getattr(args, "id", None), as_json=args.json,
                      path_params={p: getattr(args, p) for p in resource.path_params if getattr(args, p, None)},
                      filters={k: getattr(args, k) for k in ("kind", "state") if getattr(args, k, None)},
                      limit=getattr(args, "limit", None), body_file=getattr(args, "file", None),
                      flags={f.field: getattr(args, f"body_{f.field}") for f in resource.create_flags} if args.action == "create" else {},
                      out=getattr(args, "out", None), force=getattr(args, "force", False))
    with api_client(config.api_url, api_key=config.require_key("researcher"), timeout=300.0,
                    retry=RetryPolicy(deadline_s=RESOURCE_RETRY_S)) as client:
        client.headers.update(config.headers())
        try:
            return run_action(client, request)
        except httpx.HTTPError as exc:
            raise MedsynthError(f"cannot reach the api at {config.api_url}: {exc} (is the stack up? medsynth stack status)") from exc


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"should be a whole number of at least 1, got {text!r}")
    return int(text)


def _generators_list(args: argparse.Namespace) -> int:
    return _generators(args) if args.store else _resource(args)


def _add_resource(sub, name: str, common: argparse.ArgumentParser):
    """``medsynth <name> <action> …`` for each action of the resource; returns the actions' subparsers (for extra actions)."""
    resource = RESOURCES[name]
    p = sub.add_parser(name, help=resource.help)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action in resource.actions:
        a = actions.add_parser(action, parents=[common], help=ACTION_HELP[action])
        if action in ("show", "cancel", "download"):
            a.add_argument("id", help=f"the {resource.noun}'s id")
        if action in ("show", "create"):
            for param in resource.path_params:
                a.add_argument(f"--{param}", required=True)
        if action == "list":
            a.add_argument("--limit", type=_positive, help="at most this many (also the page size asked for)")
            if resource.job_kind or name == "jobs":
                a.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
            if name == "jobs":
                a.add_argument("--kind", choices=["prepare-dataset", "train-generator", "sample-cohort", "train-segmenter", "evaluate"])
        if action == "create":
            a.add_argument("-f", "--file", help="the request body as YAML or JSON (-: standard input); flags override its fields")
            for flag in resource.create_flags:
                a.add_argument(flag.name, dest=f"body_{flag.field}", type=flag.type, nargs="+" if flag.many else None,
                               metavar=flag.name.lstrip("-").replace("-", "_").upper(), help=flag.help or f"the body's {flag.field}")
        if action == "download":
            a.add_argument("--out", help="where to write it (a file, or a folder to write it in; several files: a folder)")
            a.add_argument("--force", action="store_true", help="replace files that exist")
        a.set_defaults(run=_resource)
    return actions


def _torchserve(args: argparse.Namespace) -> int:
    """Run TorchServe under this process until SIGTERM; its addresses go to ``--state-file``."""
    import json
    import os
    import signal
    import threading

    from medsynth.local.torchserve import TorchServeProcess

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Path(args.model_store).mkdir(parents=True, exist_ok=True)
    with TorchServeProcess(args.model_store, args.workdir, base_port=args.base_port) as server:
        state = {"inference_url": server.inference_url, "management_url": server.management_url,
                 "metrics_url": server.metrics_url, "model_store": str(server.model_store), "startup_s": server.startup_s,
                 "key_file": str(server.key_file)}
        tmp = Path(args.state_file).with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, args.state_file)
        print(f"torchserve ready at {server.inference_url} after {server.startup_s:.1f}s", flush=True)
        while not stop.wait(1.0):
            if not server.running():
                print("torchserve exited unexpectedly; see its log", flush=True)
                return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsynth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"medsynth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="start, stop or inspect the local stack (broker, services)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--services", nargs="+", help="only these services (default: all)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    p.set_defaults(run=_stack)

    p = sub.add_parser("ingest", help="upload a Decathlon-layout folder (imagesTr/ + labelsTr/) or a folder of DICOM files")
    p.add_argument("folder")
    p.add_argument("--patients", help="NIfTI: CSV with columns case,patient_id (several scans of one patient stay together)")
    p.add_argument("--patient-pattern", help="NIfTI: regex whose first (or 'patient') group of the case name is the patient id")
    p.add_argument("--dataset", required=True)
    p.add_argument("--url", help="ingest service URL (default: the local stack's)")
    p.add_argument("--workers", type=int, default=4, help="concurrent uploads")
    p.add_argument("--api-key", help="a key with the uploader role (default: $MEDSYNTH_API_KEY)")
    p.add_argument("--on-error", choices=["skip", "stop"], default="skip",
                   help="skip (default): go on after a patient (or case) something of which was refused, quarantined or not "
                        "sent; stop: send no further one (those in flight finish; the rest are listed as not sent)")
    p.set_defaults(run=_ingest)

    p = sub.add_parser("keys", help="create, list or revoke API keys (bootstraps access to the stack)")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("key_id", nargs="?", help="revoke: the key's id")
    p.add_argument("--project", default="default")
    p.add_argument("--role", choices=["uploader", "researcher", "viewer", "admin"], help="create: the key's role")
    p.add_argument("--name", help="create: what will hold the key")
    p.add_argument("--expires-days", type=float, default=90.0, help="create: days until it expires (0: never)")
    p.set_defaults(run=_keys)

    p = sub.add_parser("projects", help="create or list projects; print a project's DICOM de-identification key")
    p.add_argument("action", choices=["create", "list", "deid-key"])
    p.add_argument("name", nargs="?")
    p.add_argument("--description")
    p.add_argument("--retain-dates", action="store_true",
                   help="create: DICOM dates shifted per patient instead of removed (the modified-dates option)")
    p.add_argument("--allow-burned-in", action="store_true",
                   help="create: ingest DICOM that may show identifying text in its pixels instead of quarantining it")
    p.add_argument("--time-series", choices=["refuse", "first", "split"], default="refuse",
                   help="create: a time series (DICOM, 4D NIfTI) is refused (default), kept as its first time point, "
                        "or split into one scan per time point")
    p.set_defaults(run=_projects)

    p = sub.add_parser("audit", help="read or verify the audit trail")
    p.add_argument("action", choices=["list", "verify"])
    p.add_argument("--project", help="list: only this project's records")
    p.add_argument("--since", type=int, default=0, help="list: only records after this number")
    p.set_defaults(run=_audit)

    p = sub.add_parser("phantoms", help="write synthetic phantom scans in the Decathlon layout")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_phantoms)

    p = sub.add_parser("demo", help="run the main job end to end on the local stack")
    p.add_argument("--data", help="a Decathlon-layout folder to use instead of phantoms")
    p.add_argument("--dataset", help="dataset name to ingest into (default: the --data folder's name made valid, "
                   "or 'phantoms' for the generated phantom scans)")
    for knob, default in vars(DemoSettings()).items():
        p.add_argument(f"--{knob.replace('_', '-')}", dest=knob, type=type(default), help=f"default {default}")
    p.set_defaults(run=_demo)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the api's JSON instead of a table or lines")
    common.add_argument("--url", help="the api (default: MEDSYNTH_API_URL, the config file's api_url, else the local stack's)")
    common.add_argument("--project", help="the project to act in (X-Medsynth-Project; default: MEDSYNTH_PROJECT or the config "
                        "file's project, else the key's own)")
    for name in RESOURCES:
        actions = _add_resource(sub, name, common)
        if name == "generators":
            actions.choices["list"].add_argument("--store", action="store_true",
                                                 help="read the trained generators from the store directly (no stack needed)")
            actions.choices["list"].set_defaults(run=_generators_list)
            a = actions.add_parser("families", help="the families one can train, with their options")
            a.add_argument("--json", action="store_true", help="their descriptions as JSON")
            a.add_argument("-v", "--verbose", action="store_true", help="every option with its default")
            a.set_defaults(run=_generators)
        if name == "cohorts":
            a = actions.add_parser("export-nnunet", help="export a finished cohort from the store as an nnU-Net raw dataset "
                                   "(no stack needed)")
            a.add_argument("id", metavar="cohort_id")
            a.add_argument("out", help="the folder to write DatasetXXX_NAME/ in (e.g. $nnUNet_raw)")
            a.add_argument("--dataset-id", type=int, required=True, help="nnU-Net's dataset id, 1-999 (not taken in OUT)")
            a.add_argument("--name", help="nnU-Net's dataset name (default: the cohort's dataset, then -synthetic or -mixed)")
            a.add_argument("--with-real", action="store_true",
                           help="add the labelled training slices of the view the cohort's generator learned from, and splits by patient")
            a.add_argument("--project", default="default", help="the project the cohort belongs to")
            a.set_defaults(run=_export_nnunet)

    p = sub.add_parser("study", help="run a study (families x seeds x segmenters x arms) from a YAML spec and save its results")
    p.add_argument("action", choices=["run"])
    p.add_argument("spec", help="the study as YAML or JSON (the body of POST /v1/studies)")
    p.add_argument("--url", help="the api (default: the local stack's)")
    p.add_argument("--api-key", help="a key with the researcher role (default: $MEDSYNTH_API_KEY)")
    p.add_argument("--out", help="folder for results.json, results.csv and report.html (default: study-<id>)")
    p.add_argument("--timeout", type=float, default=None, help="stop following after this many seconds (the study goes on)")
    p.set_defaults(run=_study)

    p = sub.add_parser("topics", help="create the system's Kafka topics on MEDSYNTH_KAFKA_BOOTSTRAP (a deployment's first step)")
    p.set_defaults(run=_topics)

    p = sub.add_parser("torchserve", help="run TorchServe for the sampler in the foreground (used by `stack up`)")
    p.add_argument("--model-store", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--state-file", required=True)
    p.add_argument("--base-port", type=int, help="fixed ports: inference on it, management, metrics and gRPC above (default: free ports)")
    p.set_defaults(run=_torchserve)

    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status (see the module: 0 done, 1 refused or failed, 2 usage)."""
    args = build_parser().parse_args(argv)  # a usage error exits 2 here, --help and --version 0
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"medsynth: error: {exc}", file=sys.stderr)
        return 2
    except MedsynthError as exc:
        print(f"medsynth: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
