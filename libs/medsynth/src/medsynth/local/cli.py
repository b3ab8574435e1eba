"""The `medsynth` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medsynth.core.errors import MedsynthError
from medsynth.local.demo import DemoSettings


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
        return 0 if all(r["alive"] and r["ready"] in ("ready", "-") for r in rows) else 1
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from medsynth.core.settings import load_settings
    from medsynth.local.ingest_client import ingest_folder

    url = args.url or f"http://127.0.0.1:{load_settings().stack_base_port + 1}"
    summary = ingest_folder(Path(args.folder), args.dataset, url, workers=args.workers)
    print("\n".join(summary.lines()))
    return 1 if summary.rejected else 0


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
    """``list``: the trained generators in the store (no stack needed); ``families``: what can be trained."""
    import json

    from medsynth.core.settings import load_settings
    from medsynth.generators.registry import FAMILIES

    if args.action == "families":
        for family in FAMILIES.values():
            info = family.describe()
            print(f"{info['family']:<10} {info['title']}")
            print(f"{'':<10} sizes {info['image_sizes']}, mask sources {info['mask_sources']}, losses {info['losses']}")
            if args.verbose:
                for name, schema in info["options"].items():
                    print(f"{'':<12}{name}: {schema.get('description', '')} (default {json.dumps(schema.get('default'))})")
        return 0
    from medsynth.store import open_store

    store = open_store(load_settings())
    entries = [store.get_json(k) for k in sorted(store.list("generators/")) if k.endswith("/generator.json")]
    if not entries:
        print("no trained generators in the store")
        return 0
    print(f"{'generator':<36} {'family':<10} {'dataset':<16} {'steps':>7}  {'mask sources':<26} registered")
    for e in entries:
        steps = e.get("steps_done", (e.get("spec") or {}).get("training", {}).get("steps", "?"))
        sources = ",".join(e.get("mask_sources", ["generated"]))
        print(f"{e['generator_id']:<36} {e.get('family', 'joint-gan'):<10} {e['dataset']:<16} {steps:>7}  {sources:<26} {e['registered_at'][:19]}")
    return 0


def _torchserve(args: argparse.Namespace) -> int:
    """Run TorchServe under this process until SIGTERM; its addresses go to ``--state-file``."""
    import json
    import os
    import signal
    import threading

    from medsynth.sampling.torchserve import TorchServeProcess

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Path(args.model_store).mkdir(parents=True, exist_ok=True)
    with TorchServeProcess(args.model_store, args.workdir, base_port=args.base_port) as server:
        state = {"inference_url": server.inference_url, "management_url": server.management_url,
                 "metrics_url": server.metrics_url, "model_store": str(server.model_store), "startup_s": server.startup_s}
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
    parser = argparse.ArgumentParser(prog="medsynth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="start, stop or inspect the local stack (broker, services)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--services", nargs="+", help="only these services (default: all)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    p.set_defaults(run=_stack)

    p = sub.add_parser("ingest", help="upload a Decathlon-layout folder (imagesTr/ + labelsTr/)")
    p.add_argument("folder")
    p.add_argument("--dataset", required=True)
    p.add_argument("--url", help="ingest service URL (default: the local stack's)")
    p.add_argument("--workers", type=int, default=4, help="concurrent uploads")
    p.set_defaults(run=_ingest)

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

    p = sub.add_parser("generators", help="list the trained generators in the store, or the families one can train")
    p.add_argument("action", choices=["list", "families"])
    p.add_argument("-v", "--verbose", action="store_true", help="families: every option with its default")
    p.set_defaults(run=_generators)

    p = sub.add_parser("torchserve", help="run TorchServe for the sampler in the foreground (used by `stack up`)")
    p.add_argument("--model-store", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--state-file", required=True)
    p.add_argument("--base-port", type=int, help="fixed ports: inference on it, management, metrics and gRPC above (default: free ports)")
    p.set_defaults(run=_torchserve)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MedsynthError as exc:
        print(f"medsynth: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
