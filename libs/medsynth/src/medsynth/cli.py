"""The `medsynth` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medsynth.core.errors import MedsynthError


def _stack(args: argparse.Namespace) -> int:
    from medsynth import stack
    from medsynth.core.settings import load_settings

    settings = load_settings()
    if args.action == "up":
        state = stack.up(settings, names=args.services, timeout=args.timeout)
        print(f"stack is up; MEDSYNTH_KAFKA_BOOTSTRAP={state.bootstrap}; logs in {settings.home.resolve() / 'logs'}")
    elif args.action == "down":
        stack.down(settings)
    else:
        rows = stack.status(settings)
        if not rows:
            print("no stack is running")
            return 1
        print(f"{'name':<10} {'pid':>7} {'port':>5}  state")
        for r in rows:
            state = ("running" if r["alive"] else "exited") + (f", {r['ready']}" if r["port"] else "")
            print(f"{r['name']:<10} {r['pid']:>7} {r['port'] or '':>5}  {state}")
        return 0 if all(r["alive"] and r["ready"] in ("ready", "-") for r in rows) else 1
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from medsynth.core.settings import load_settings
    from medsynth.ingest_client import ingest_folder

    url = args.url or f"http://127.0.0.1:{load_settings().stack_base_port + 1}"
    summary = ingest_folder(Path(args.folder), args.dataset, url, workers=args.workers)
    print("\n".join(summary.lines()))
    return 1 if summary.rejected else 0


def _phantoms(args: argparse.Namespace) -> int:
    from medsynth.phantoms import write_phantom_dataset

    names = write_phantom_dataset(Path(args.out), n=args.n, seed=args.seed)
    print(f"wrote {len(names)} phantom cases to {args.out}/imagesTr and {args.out}/labelsTr")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from medsynth.core.settings import load_settings
    from medsynth.demo import run_demo

    run_demo(load_settings(), Path(args.data) if args.data else None, phantoms=args.phantoms)
    return 0


def _broker(args: argparse.Namespace) -> int:
    from medsynth.bus.local_broker import serve
    from medsynth.bus.topics import all_topics
    from medsynth.core.settings import load_settings

    serve(topics=all_topics(load_settings().topic_prefix))
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
    p.add_argument("--phantoms", type=int, default=12, help="number of phantom patients")
    p.set_defaults(run=_demo)

    p = sub.add_parser("broker", help="run a local Kafka-protocol broker in the foreground")
    p.set_defaults(run=_broker)
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
