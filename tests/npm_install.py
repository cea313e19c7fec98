"""``npm ci`` of a pinned test folder, once, even when several xdist workers need it at the same time
(two concurrent ``npm ci`` in one folder delete each other's node_modules)."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path


def ensure_installed(folder: Path, marker: Path) -> None:
    """Run ``npm ci`` in ``folder`` unless ``marker`` (a file the install creates) exists; the first
    worker installs, the others wait for it under an exclusive lock and then find the marker."""
    if marker.exists():
        return
    npm = shutil.which("npm")
    assert npm is not None, f"node is installed without npm: cannot install {folder.name} (npm ci)"
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"agent_runtime-npm-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=folder, check=True, timeout=600,
                           capture_output=True)
    assert marker.exists(), f"npm ci in {folder} did not install {marker.name}"
