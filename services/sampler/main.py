"""medsynth sampler worker: draws synthetic cohorts from trained generators through TorchServe.

Consumes its job kinds' command topics; /healthz, /readyz and /metrics on MEDSYNTH_HTTP_PORT.
"""

from medsynth.handlers.service import main

if __name__ == "__main__":
    main("sampler")
