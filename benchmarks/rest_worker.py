"""`connector worker` with HubSpot's bulk paths switched off (used by bulk_vs_rest.py).

The bulk threshold has no setting: it is the keyword default `bulk_threshold=DEFAULT_BULK_THRESHOLD`
of HubSpotListSource and HubSpotFlagWriter, bound when connector/crm/hubspot.py is imported, so
patching the module constant alone would change nothing. This wrapper raises both keyword
defaults (and the constant, for anything reading it later) before running the worker's main.

    .venv/bin/python benchmarks/rest_worker.py      # same environment as `connector worker`
"""

from __future__ import annotations

import sys

import connector.crm.hubspot.api as hubspot
from connector.cli import main

NEVER_BULK = sys.maxsize


def force_rest_paths() -> None:
    hubspot.DEFAULT_BULK_THRESHOLD = NEVER_BULK
    for cls in (hubspot.HubSpotListSource, hubspot.HubSpotFlagWriter):
        defaults = cls.__init__.__kwdefaults__
        if defaults is None or "bulk_threshold" not in defaults:
            raise RuntimeError(f"{cls.__name__} no longer takes bulk_threshold; update this wrapper")
        defaults["bulk_threshold"] = NEVER_BULK


if __name__ == "__main__":
    force_rest_paths()
    sys.exit(main(["worker"]))
