"""What the counting worker's process loads: no gRPC and none of the API's modules.

The worker serves no gRPC. grpcio costs ~17 MB of RSS once imported (measured: the
worker's `python -m services.metering` imports went from 82.6 to 68.7 MB when it
stopped), and the Cost API's servicers and store ~0.5 MB more, in every worker of
a deployment, so a module on the worker's path that pulls one in is a regression.
A fresh interpreter shows what importing the entry point really loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
API_ONLY = (
    "quartermaster.auth",
    "quartermaster.directory_client",
    "services.metering.cost_servicer",
    "services.metering.price_servicer",
    "services.metering.stores.usage",
)


def test_the_worker_entry_point_imports_no_grpc_and_no_api_module() -> None:
    code = (
        "import json, sys; import services.metering.__main__; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert not {m for m in loaded if m == "grpc" or m.startswith("grpc.")}
    assert not loaded & set(API_ONLY)
