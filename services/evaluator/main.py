"""medsynth evaluator worker: scores cohorts: fidelity, utility and memorization.

Consumes its job kinds' command topics; /healthz, /readyz and /metrics on MEDSYNTH_HTTP_PORT.
"""

from medsynth.handlers.service import main

if __name__ == "__main__":
    main("evaluator")
