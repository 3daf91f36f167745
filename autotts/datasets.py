"""Published replay data: a small catalog and a fetcher (`autotts data fetch`, `autotts data list`).

Files land in the data folder (`autotts.paths.data_dir()`: $AUTOTTS_DATA, else the platform's user
cache directory) in the layout the rest of the code reads: `<data>/autotts-replay/<MODEL>/<BENCH>.json`.
A download goes to `<file>.part`, resumes from there with an HTTP Range request, and is renamed
into place only after its size and sha256 match the catalog, so a file under its final name is
always the published one. Standard library only (urllib): no new network dependency.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from autotts.errors import ConfigError, DataError

AUTOTTS_COMMIT = "3cd98d12c7cb999afc5c21381f22ea5811ac6c05"
# The AutoTTS repository's replay files at the pinned commit. A mirror (a directory with the same
# <MODEL>/<BENCH>.json layout, over http(s) or file://) can be given with --base-url or
# $AUTOTTS_DATA_URL.
AUTOTTS_BASE_URL = (
    f"https://raw.githubusercontent.com/AutoTTS/AutoTTS/{AUTOTTS_COMMIT}/"
    "efficient_reasoning_controller/test_environment"
)
URL_ENV = "AUTOTTS_DATA_URL"
CHUNK = 1 << 16
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DataFile:
    remote: str  # path below the dataset's base URL
    local: str  # path below the data folder
    sha256: str
    size: int

    @property
    def key(self) -> str:
        """Short name, e.g. Qwen3-8B/aime24."""
        return self.remote.removesuffix(".json")


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    origin: str
    base_url: str
    files: tuple[DataFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def _qwen3_files() -> tuple[DataFile, ...]:
    table = """
    Qwen3-0.6B/aime24 6b4297405b494c84afb05b337af315c617513eb2580ed327ca7040b760988a7d 2396753
    Qwen3-0.6B/aime25 33f65695ecc78fb777f53bead2128ba1249772b3608c6a22bd4e674488d453e0 2334526
    Qwen3-0.6B/hmmt25 7e7c574aaedcd05b36b801c11e3bdd7e2cfd3b7309a2376967cc1e8bc01ebebc 2654077
    Qwen3-1.7B/aime24 5d6c9a63e26c7cf60181c53b67adc7017db146bf2ff1e3b9784673cb97313ad1 2380710
    Qwen3-1.7B/aime25 77bfb8e8589d0c0da3ccb6d5852c37bf23273e047664a5086d492896a5ae2496 2568922
    Qwen3-1.7B/hmmt25 87d158ecdc3551e375891d19917ce02f8fdcadd778afe99ad2ae179f872fb298 2741320
    Qwen3-4B/aime24 d99ce8711c60605b7555a7fc6e66cc5ae0abe7ce6b36bf4e712802d26aa7ffdd 2066911
    Qwen3-4B/aime25 977f56022b0cd225bd0233aff1f7b39740c45ec79693475ada8c766ee4097a3f 2673679
    Qwen3-4B/hmmt25 4bc0b51765a0fc5a3d9a462b1ff317b70577d478c5cb5e06f20fe9d5b73b4b1c 2973086
    Qwen3-8B/aime24 be725bdacc64712088d5c947b9b869471ad659c8465c3e5b6e9ff5191bfd0128 2103633
    Qwen3-8B/aime25 969bba7bb0276f66d421d069e078e20a9b3ff4a59977393a2733a97ca6e4566c 2675898
    Qwen3-8B/hmmt25 561efa74e3dd4ca79b67463c7c5d449762824b4534bdc7267b19d9af29d2a9a9 3219245
    """
    files = []
    for line in table.strip().splitlines():
        key, sha, size = line.split()
        files.append(DataFile(f"{key}.json", f"autotts-replay/{key}.json", sha, int(size)))
    return tuple(files)


CATALOG: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="autotts-qwen3",
            description="AutoTTS replays: Qwen3 0.6B/1.7B/4B/8B on AIME24, AIME25, HMMT25 "
            "(30 questions × 128 branches, Δ=500)",
            origin=f"AutoTTS repository, commit {AUTOTTS_COMMIT[:12]}, "
            "efficient_reasoning_controller/test_environment/",
            base_url=AUTOTTS_BASE_URL,
            files=_qwen3_files(),
        ),
    )
}
DEFAULT_DATASET = "autotts-qwen3"
FETCH_COMMAND = f"autotts data fetch {DEFAULT_DATASET}"


# ---- where data lives and what is missing -----------------------------------------------------


def data_source() -> str:
    """How the data folder was chosen, for messages."""
    return "from $AUTOTTS_DATA" if os.environ.get("AUTOTTS_DATA") else "the default cache folder"


def missing_hint(path: str | os.PathLike[str] | None = None) -> str:
    """The one command that gets missing published data (and where it will go), as a clause."""
    from autotts.paths import data_dir

    return (f"get it with `{FETCH_COMMAND}` (into {data_dir()}, {data_source()}; "
            "set AUTOTTS_DATA to use another folder)")


def is_published_path(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is where a catalog file would be (under any data folder)."""
    parts = Path(path).parts
    return any(
        len(parts) >= len(Path(f.local).parts)
        and parts[-len(Path(f.local).parts):] == Path(f.local).parts
        for d in CATALOG.values() for f in d.files
    )


# ---- selection --------------------------------------------------------------------------------


def select(names: Iterable[str]) -> list[DataFile]:
    """Files for NAMEs: a dataset name, or one file as <dataset>/<MODEL>/<BENCH> or <MODEL>/<BENCH>.
    No names: every dataset."""
    names = list(names)
    if not names:
        return [f for d in CATALOG.values() for f in d.files]
    chosen: list[DataFile] = []
    for name in names:
        if name in CATALOG:
            found = list(CATALOG[name].files)
        else:
            key = name.removesuffix(".json")
            for d in CATALOG:
                key = key.removeprefix(d + "/")
            found = [f for d in CATALOG.values() for f in d.files if f.key == key]
        if not found:
            known = ", ".join(CATALOG)
            raise ConfigError(f"unknown data set {name!r} (known: {known}, or one file of it "
                              "such as Qwen3-8B/aime24; see `autotts data list`)")
        chosen += [f for f in found if f not in chosen]
    return chosen


def dataset_of(f: DataFile) -> Dataset:
    return next(d for d in CATALOG.values() if f in d.files)


def base_url_for(d: Dataset, base_url: str | None = None) -> str:
    return (base_url or os.environ.get(URL_ENV) or d.base_url).rstrip("/")


# ---- status -----------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def status(f: DataFile, root: Path, verify: bool = False) -> str:
    """'cached', 'missing', 'partial' (a resumable .part), or 'wrong size' / 'bad checksum'."""
    p = root / f.local
    if p.is_file():
        if p.stat().st_size != f.size:
            return "wrong size"
        if verify and sha256_of(p) != f.sha256:
            return "bad checksum"
        return "cached"
    if _part(p).is_file():
        return "partial"
    return "missing"


def _part(p: Path) -> Path:
    return p.with_name(p.name + ".part")


# ---- download ---------------------------------------------------------------------------------


@dataclass
class FetchResult:
    file: DataFile
    path: Path
    action: str  # "cached" (already there and verified) or "downloaded"
    resumed_from: int = 0


Progress = Callable[[int], None]  # called with the number of new bytes


def fetch(
    files: Iterable[DataFile],
    root: Path,
    *,
    base_url: str | None = None,
    progress: Progress | None = None,
    timeout: float = TIMEOUT_S,
) -> list[FetchResult]:
    """Make every file present and verified under `root`. A verified file is left alone; a file
    with the wrong content is fetched again and replaced atomically; an interrupted download
    resumes from its .part file. Raises DataError (one line) on the first failure."""
    results = []
    for f in files:
        results.append(fetch_one(f, root, base_url=base_url, progress=progress, timeout=timeout))
    return results


def fetch_one(
    f: DataFile,
    root: Path,
    *,
    base_url: str | None = None,
    progress: Progress | None = None,
    timeout: float = TIMEOUT_S,
) -> FetchResult:
    dest = root / f.local
    if dest.is_file() and dest.stat().st_size == f.size and sha256_of(dest) == f.sha256:
        if progress:
            progress(f.size)
        return FetchResult(f, dest, "cached")
    url = f"{base_url_for(dataset_of(f), base_url)}/{f.remote}"
    part = _part(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{dest.parent}: cannot create the data folder: {e.strerror or e}") from None
    have = part.stat().st_size if part.is_file() else 0
    if have > f.size:  # not a prefix of this file: start over
        part.unlink()
        have = 0
    resumed = have
    if have < f.size:
        have = _download(url, part, have, f.size, progress, timeout)
    elif progress:
        progress(have)
    if have != f.size:
        raise DataError(f"{url}: download stopped at {have:,} of {f.size:,} bytes; "
                        "run the same command again to resume")
    digest = sha256_of(part)
    if digest != f.sha256:
        part.unlink()
        raise DataError(f"{url}: checksum mismatch (sha256 {digest[:12]}…, expected "
                        f"{f.sha256[:12]}…); the download was discarded: run the command again, "
                        "or check the mirror given by --base-url / $AUTOTTS_DATA_URL")
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(part, dest)  # atomic: the final name only ever holds a verified file
    return FetchResult(f, dest, "downloaded", resumed_from=resumed)


def _download(url: str, part: Path, have: int, size: int, progress: Progress | None,
              timeout: float) -> int:
    """Append the rest of `url` to `part` from byte `have`; returns the bytes now in `part`."""
    req = urllib.request.Request(url, headers={"User-Agent": "autotts-data-fetch"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # our .part is not a prefix the server knows: start over
            part.unlink(missing_ok=True)
            return _download(url, part, 0, size, progress, timeout)
        hint = (f"; if the files live elsewhere, give that location with --base-url or "
                f"${URL_ENV}") if e.code in (403, 404, 410) else ""
        raise DataError(f"{url}: HTTP {e.code} {e.reason}{hint}") from None
    except urllib.error.URLError as e:
        reason = getattr(e.reason, "strerror", None) or e.reason
        raise DataError(f"{url}: cannot connect ({reason}); check the network, or give a mirror "
                        f"with --base-url or ${URL_ENV}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{url}: cannot connect ({e})") from None
    with resp:
        status = getattr(resp, "status", None) or 200
        if have and status != 206:  # the server ignored the Range header: whole file again
            if progress:
                progress(-have)
            have = 0
        mode = "ab" if have else "wb"
        try:
            with open(part, mode) as out:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    if have + len(chunk) > size:
                        out.write(chunk[: size - have])
                        have = size + 1  # more bytes than the catalog says: not this file
                        break
                    out.write(chunk)
                    have += len(chunk)
                    if progress:
                        progress(len(chunk))
        except (PermissionError, FileNotFoundError, IsADirectoryError) as e:
            raise DataError(f"{part}: cannot write: {e.strerror or e}") from None
        except (OSError, http.client.HTTPException):
            # A timeout, reset or short body mid-transfer: keep the .part for the next run.
            return part.stat().st_size if part.is_file() else 0
    if have > size:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: the server sent more than the {size:,} bytes of the catalog's "
                        "file; the download was discarded (wrong file or mirror?)")
    return have
