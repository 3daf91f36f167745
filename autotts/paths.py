"""Where things live: the shared reference data, and built-in controllers/envs (checkout or wheel)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parent


def _builtin_dir(name: str) -> Path:
    # A checkout keeps controllers/ and env/ beside the package (DESIGN §2); a wheel carries them
    # inside it under _builtin/ (see pyproject's force-include).
    checkout = CHECKOUT_DIR / name
    if checkout.is_dir() and (CHECKOUT_DIR / "pyproject.toml").is_file():
        return checkout
    return PACKAGE_DIR / "_builtin" / name


def controllers_dir() -> Path:
    return _builtin_dir("controllers")


def envs_dir() -> Path:
    return _builtin_dir("env")


def data_dir() -> Path:
    """The shared data folder: $AUTOTTS_DATA, else ../shared/data beside the checkout."""
    env = os.environ.get("AUTOTTS_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return (CHECKOUT_DIR.parent / "shared" / "data").resolve()


def reference_dir() -> Path:
    """The shared reference figures (../shared/reference), found beside the data folder."""
    return data_dir().parent / "reference"


def project_data_dir() -> Path:
    """data/ in the checkout: small stores the project itself generates (synthetic sample)."""
    return CHECKOUT_DIR / "data"
