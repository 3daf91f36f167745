"""Where things live: the published replay data (the data folder), and built-in controllers/envs
(checkout or wheel)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parent


def _builtin_dir(name: str) -> Path:
    # A checkout keeps controllers/ and env/ beside the package (docs/design.md §2); a wheel carries them
    # inside it under _builtin/ (see pyproject's force-include).
    checkout = CHECKOUT_DIR / name
    if checkout.is_dir() and (CHECKOUT_DIR / "pyproject.toml").is_file():
        return checkout
    return PACKAGE_DIR / "_builtin" / name


def controllers_dir() -> Path:
    return _builtin_dir("controllers")


def envs_dir() -> Path:
    return _builtin_dir("env")


def default_data_dir() -> Path:
    """The platform's user cache folder for autotts (e.g. ~/.cache/autotts on Linux)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("autotts", appauthor=False))


def data_dir() -> Path:
    """The data folder, where `autotts data fetch` puts the published replays and `{data}` in
    env files points: $AUTOTTS_DATA if set, else the platform's user cache folder. Layout:
    <data>/autotts-replay/<MODEL>/<BENCH>.json."""
    env = os.environ.get("AUTOTTS_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return default_data_dir()


def reference_dir() -> Path:
    """The published reference evaluator's figures (tests only): $AUTOTTS_REFERENCE, else
    `reference/` beside the data folder."""
    env = os.environ.get("AUTOTTS_REFERENCE")
    if env:
        return Path(env).expanduser().resolve()
    return data_dir().parent / "reference"


def project_data_dir() -> Path:
    """data/ in the checkout: small stores the project itself generates (synthetic sample)."""
    return CHECKOUT_DIR / "data"
