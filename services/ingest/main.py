"""medsynth ingest service (FastAPI): scan uploads into datasets.

Serves on MEDSYNTH_HTTP_HOST:MEDSYNTH_HTTP_PORT; /healthz, /readyz and /metrics beside the API.
"""

from medsynth.api.app import main

if __name__ == "__main__":
    main("ingest")
