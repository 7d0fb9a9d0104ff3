"""The optional peer libraries (joblib, SharedArray, torch) and installed versions.

A peer that does not import, or is left out with ``--without``, is ``None`` here and
gets a "not installed" row in every table; nothing else changes.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from types import ModuleType

NOT_INSTALLED = "not installed"
PEER_NAMES = ("joblib", "SharedArray", "torch")


def dist_version(name: str) -> str:
    """Installed version of a distribution, or "not installed"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


@dataclass
class Peers:
    """The optional peer libraries found in this environment."""

    modules: dict[str, ModuleType | None]
    problems: dict[str, str]

    def get(self, name: str) -> ModuleType | None:
        """The module, or ``None`` when it is not installed (or left out on request)."""
        return self.modules.get(name)

    def version(self, name: str) -> str:
        """Installed version of a peer, or why it is missing."""
        module = self.modules.get(name)
        if module is None:
            return f"{NOT_INSTALLED} ({self.problems.get(name, 'unknown')})"
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return str(getattr(module, "__version__", "unknown"))


def load_peers(without: set[str]) -> Peers:
    """Import joblib, SharedArray and torch where installed; never fail."""
    modules: dict[str, ModuleType | None] = {}
    problems: dict[str, str] = {}
    for name in PEER_NAMES:
        if name.lower() in without:
            modules[name] = None
            problems[name] = "left out with --without"
            continue
        try:
            modules[name] = importlib.import_module(name)
            if name == "torch":
                # registers torch's reducers with multiprocessing's pickler
                importlib.import_module("torch.multiprocessing")
        except Exception as exc:  # any import failure means "not installed" here
            modules[name] = None
            problems[name] = f"{type(exc).__name__}: {exc}"[:120]
    return Peers(modules, problems)
