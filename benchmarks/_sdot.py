"""Run the reference library `sdot` in its own interpreter (it needs Python >= 3.12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Callable

import numpy as np


def run(python: str, script: str, arrays: dict[str, np.ndarray], args: list[str],
        read: Callable[[str, dict], dict] | None = None) -> dict | None:
    """Save ``arrays`` as ``<name>.npy`` in a temporary folder, run ``script`` there as
    ``python script folder *args`` and return the JSON object its last output line prints
    (``read(folder, result)`` may add what it left in the folder); None, reported, on failure."""
    with tempfile.TemporaryDirectory() as folder:
        for name, value in arrays.items():
            np.save(os.path.join(folder, f"{name}.npy"), value)
        path = os.path.join(folder, "run.py")
        with open(path, "w") as f:
            f.write(script)
        out = None
        try:
            out = subprocess.run([python, path, folder, *args], capture_output=True, text=True, timeout=3600)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            return read(folder, result) if read else result
        except Exception as e:  # noqa: BLE001 -- report, do not hide
            print(f"  sdot failed: {e} {out.stderr[-500:] if out is not None else ''}", file=sys.stderr)
            return None
