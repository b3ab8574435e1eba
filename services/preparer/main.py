"""medsynth preparer worker: prepares datasets into training views (prepare-dataset), on CPU nodes.

Deployed beside a trainer on a GPU pool that runs train-generator only (MEDSYNTH_WORKER_KINDS): dataset
preparation then holds no GPU. Without a preparer the trainer runs prepare-dataset itself.
Consumes its job kinds' command topics; /healthz, /readyz and /metrics on MEDSYNTH_HTTP_PORT.
"""

from medsynth.handlers.service import main

if __name__ == "__main__":
    main("preparer")
