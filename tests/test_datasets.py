"""`autotts data fetch` / `data list` against a fixture catalog served by a real HTTP server on
127.0.0.1 (no other network): download, resume, interrupted transfer, bad checksum, a server that
ignores Range, HTTP errors, offline, and the CLI around it."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autotts import datasets
from autotts.cli import app
from autotts.datasets import DataError, DataFile, Dataset, fetch, select, status

BLOB_A = bytes(range(256)) * 700  # 179,200 bytes: several read chunks
BLOB_B = b'{"not": "really json, just bytes"}\n' * 50


@dataclass
class Server:
    files: dict[str, bytes]
    mode: str = "normal"  # normal | truncate | corrupt | ignore-range
    requests: list[dict[str, str | None]] = field(default_factory=list)
    url: str = ""


class _Handler(http.server.BaseHTTPRequestHandler):
    server_state: Server

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        st = self.server_state
        st.requests.append({"path": self.path, "range": self.headers.get("Range")})
        body = st.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404, "Not Found")
            return
        if st.mode == "corrupt":
            body = bytes(b ^ 1 for b in body)
        start = 0
        rng = self.headers.get("Range")
        if rng and st.mode != "ignore-range":
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        part = body[start:]
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if st.mode == "truncate":
            # Promise the whole body, send a third of it and hang up: an interrupted transfer.
            self.wfile.write(part[: len(part) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(part)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(files={"m1/b1.json": BLOB_A, "m2/b2.json": BLOB_B})
    handler = type("H", (_Handler,), {"server_state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _file(key: str, blob: bytes) -> DataFile:
    return DataFile(f"{key}.json", f"autotts-replay/{key}.json",
                    hashlib.sha256(blob).hexdigest(), len(blob))


@pytest.fixture
def catalog(server: Server, monkeypatch: pytest.MonkeyPatch) -> Dataset:
    d = Dataset(name="fixture", description="two test files", origin="tests",
                base_url=server.url, files=(_file("m1/b1", BLOB_A), _file("m2/b2", BLOB_B)))
    monkeypatch.setattr(datasets, "CATALOG", {"fixture": d})
    monkeypatch.delenv("AUTOTTS_DATA_URL", raising=False)
    return d


def test_fetch_downloads_verifies_and_then_skips(catalog: Dataset, server: Server, tmp_path: Path):
    seen: list[int] = []
    res = fetch(select([]), tmp_path, progress=seen.append)
    assert [r.action for r in res] == ["downloaded", "downloaded"]
    assert (tmp_path / "autotts-replay/m1/b1.json").read_bytes() == BLOB_A
    assert (tmp_path / "autotts-replay/m2/b2.json").read_bytes() == BLOB_B
    assert sum(seen) == len(BLOB_A) + len(BLOB_B)
    assert not list(tmp_path.rglob("*.part"))
    n = len(server.requests)
    res = fetch(select(["fixture"]), tmp_path)
    assert [r.action for r in res] == ["cached", "cached"]
    assert len(server.requests) == n  # verified locally, no request


def test_fetch_resumes_a_partial_file_with_a_range_request(catalog, server, tmp_path):
    part = tmp_path / "autotts-replay/m1/b1.json.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(BLOB_A[:50_000])
    assert status(catalog.files[0], tmp_path) == "partial"
    (r,) = fetch(select(["m1/b1"]), tmp_path)
    assert r.action == "downloaded" and r.resumed_from == 50_000
    assert server.requests[-1]["range"] == "bytes=50000-"
    assert (tmp_path / "autotts-replay/m1/b1.json").read_bytes() == BLOB_A
    assert not part.exists()


def test_an_interrupted_transfer_keeps_the_part_and_the_rerun_completes_it(catalog, server,
                                                                            tmp_path):
    server.mode = "truncate"
    with pytest.raises(DataError, match="run the same command again to resume"):
        fetch(select(["fixture/m1/b1"]), tmp_path)
    dest = tmp_path / "autotts-replay/m1/b1.json"
    part = dest.with_name("b1.json.part")
    assert not dest.exists()  # never a half file under the final name
    have = part.stat().st_size
    assert 0 < have < len(BLOB_A)
    server.mode = "normal"
    (r,) = fetch(select(["m1/b1"]), tmp_path)
    assert r.resumed_from == have
    assert server.requests[-1]["range"] == f"bytes={have}-"
    assert dest.read_bytes() == BLOB_A


def test_a_bad_checksum_discards_the_download_and_keeps_nothing(catalog, server, tmp_path):
    server.mode = "corrupt"
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(select(["m2/b2"]), tmp_path)
    assert not (tmp_path / "autotts-replay/m2/b2.json").exists()
    assert not (tmp_path / "autotts-replay/m2/b2.json.part").exists()


def test_a_corrupt_cached_file_is_replaced_atomically(catalog, server, tmp_path):
    dest = tmp_path / "autotts-replay/m2/b2.json"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"x" * len(BLOB_B))  # right size, wrong content
    assert status(catalog.files[1], tmp_path) == "cached"
    assert status(catalog.files[1], tmp_path, verify=True) == "bad checksum"
    (r,) = fetch(select(["m2/b2"]), tmp_path)
    assert r.action == "downloaded" and dest.read_bytes() == BLOB_B


def test_a_server_that_ignores_range_restarts_the_file(catalog, server, tmp_path):
    server.mode = "ignore-range"
    part = tmp_path / "autotts-replay/m1/b1.json.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(BLOB_A[:1000])
    seen: list[int] = []
    fetch(select(["m1/b1"]), tmp_path, progress=seen.append)
    assert (tmp_path / "autotts-replay/m1/b1.json").read_bytes() == BLOB_A
    assert sum(seen) == len(BLOB_A) - 1000  # the progress bar was wound back


def test_http_errors_and_offline_are_one_line_errors(catalog, server, tmp_path):
    del server.files["m2/b2.json"]
    with pytest.raises(DataError, match=r"HTTP 404 .*--base-url or \$AUTOTTS_DATA_URL"):
        fetch(select(["m2/b2"]), tmp_path)
    with socket.socket() as s:  # a port nobody listens on: "offline"
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=r"cannot connect .*--base-url") as e:
        fetch(select(["m1/b1"]), tmp_path, base_url=f"http://127.0.0.1:{port}")
    assert "\n" not in str(e.value)
    assert not list(tmp_path.rglob("*.json"))


def test_base_url_env_var_is_the_mirror(catalog, server, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "CATALOG", {"fixture": Dataset(
        "fixture", "", "", "http://127.0.0.1:9/nowhere", catalog.files)})
    monkeypatch.setenv("AUTOTTS_DATA_URL", server.url + "/")
    fetch(select(["m2/b2"]), tmp_path)
    assert server.requests[-1]["path"] == "/m2/b2.json"


def test_unknown_names_list_the_known_ones(catalog):
    from autotts.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown data set 'nope'.*fixture"):
        select(["nope"])


def test_cli_fetch_list_and_parquet(catalog, server, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("AUTOTTS_DATA", str(tmp_path / "cache"))
    # Real replay records, so that --parquet can import them.
    rec = [{"question": "q", "gold_answer": "1", "probe_freq": 10, "final_answers_trace": ["1"],
            "each_branch": [[["1", "2"], 25, "1"]]}]
    blob = json.dumps(rec).encode()
    server.files["m2/b2.json"] = blob
    d = Dataset("fixture", "", "", server.url, (catalog.files[0], _file("m2/b2", blob)))
    monkeypatch.setattr(datasets, "CATALOG", {"fixture": d})
    r = CliRunner().invoke(app, ["data", "fetch", "m2/b2", "--parquet"])
    assert r.exit_code == 0, r.output
    assert "1 file(s) downloaded" in r.output
    assert (tmp_path / "cache/stores/m2/b2/manifest.json").is_file()
    r = CliRunner().invoke(app, ["data", "list"])
    assert r.exit_code == 0, r.output
    assert "from $AUTOTTS_DATA" in r.output
    lines = {ln.split("│")[2].strip(): ln for ln in r.output.splitlines() if ln.count("│") > 3}
    assert "cached" in lines["m2/b2"] and "missing" in lines["m1/b1"]
    assert "get what is missing with: autotts data fetch\n" in r.output  # the data folder's own
    # --to fills another folder and says how to use it
    r = CliRunner().invoke(app, ["data", "fetch", "--to", str(tmp_path / "other")])
    assert r.exit_code == 0, r.output
    assert "export AUTOTTS_DATA=" in r.output
    assert (tmp_path / "other/autotts-replay/m1/b1.json").read_bytes() == BLOB_A
    # list --dir of another folder: its hint fills that folder, not the data folder
    r = CliRunner().invoke(app, ["data", "list", "--dir", str(tmp_path / "third")])
    assert r.exit_code == 0, r.output
    assert f"autotts data fetch --to {(tmp_path / 'third').resolve()}" in r.output


def test_real_catalog_matches_the_published_files():
    """The 12 published files, and the 8 AIME ones byte for byte where the data is present."""
    from autotts.paths import data_dir

    files = select(["autotts-qwen3"])
    assert len(files) == 12
    assert {f.key.split("/")[1] for f in files} == {"aime24", "aime25", "hmmt25"}
    for f in files:
        p = data_dir() / f.local
        if p.is_file():
            assert status(f, data_dir(), verify=True) == "cached", f.key
    assert datasets.AUTOTTS_COMMIT in datasets.AUTOTTS_BASE_URL
