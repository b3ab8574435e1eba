"""The supervisor's entry point, ``python -m medsynth.local.supervise`` (what ``medsynth stack up`` runs
in the background): the stack's plan (:mod:`medsynth.local.stack`) run by a
:class:`~medsynth.local.supervisor.Supervisor` until SIGTERM or SIGINT. Apart from the supervisor so that
the stack, which imports the supervisor's types, is not imported back by it."""

from __future__ import annotations

import argparse
import signal
import sys

from medsynth.core.logging import configure_logging
from medsynth.core.settings import load_settings
from medsynth.local.stack import plan
from medsynth.local.supervisor import Supervisor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsynth.local.supervise")
    parser.add_argument("--services", nargs="*", help="only these services (default: all)")
    args = parser.parse_args(argv)
    configure_logging("supervisor")
    settings = load_settings()
    specs, stack = plan(settings, names=args.services or None)
    supervisor = Supervisor(specs, settings.home.resolve() / "stack.json", stack)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: supervisor.stopping.set())
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
