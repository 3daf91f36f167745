"""The run directory: append-only and crash-safe (DESIGN §8).

    RUN_DIR/
      config.json      the run's identity (environment + hash, search stores, model, base URL,
                       seed, seeds, critic, smoke/trace settings); a rerun with another identity
                       is refused
      seeds.json       the seed controllers' β curves and digests on the search split (once)
      cache/           the response cache, one <sha256 of model+messages+params>.json per request
      requests.jsonl   every HTTP attempt and cache hit (purpose, round, status, tokens, cost)
      rounds/0001/     one directory per completed round:
                         prompt.md  messages.json  response.json  cost.json
        c1/ c2/ ...    one per candidate of the response (c1 alone when the response had none:
                       its verdict says why):
                         candidate.py  critic.json  verdict.json  results.json  digest.json
      runs.jsonl       the index: one line per candidate of each completed round, then one for
                       the final step
      final/           selection.json  heldout.json  selected.py (the held-out step, once)
      summary.json     rewritten whenever an invocation stops
      report/          report.md / report.html / accuracy_vs_tokens.png

A round is built in `rounds/.0003.tmp-XXXXXXXX` (mkdtemp) and renamed to `rounds/0003` only when every file is
written and fsync'd, so a round directory is complete by construction. The index line is appended
after the rename; a crash between the two is repaired on the next start (the directory is the
truth, the index is derived). Leftover temporary directories are discarded and their round redone;
the response cache makes the redo cost no second request.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from autotts import __version__
from autotts.errors import ConfigError
from autotts.fsio import (
    append_jsonl,
    current_umask,
    fsync_dir,
    read_json,
    read_jsonl,
    repair_jsonl,
    write_json,
)

ROUND_RE = re.compile(r"^\d{4}$")
SLOT_RE = re.compile(r"^c(\d+)$")


def slot_dir(round_dir: Path, slot: int) -> Path:
    return round_dir / f"c{slot}"


def label(cid: str | int, name: str | None) -> str:
    """A candidate's curve label: "r3:NAME", "r3.2:NAME" for the second file of round 3."""
    return f"r{cid}:{name or 'candidate'}"


def candidate_id(round_no: int, slot: int) -> str:
    """'3' for a round's first candidate, '3.2' for its second: labels stay those of one
    candidate per round when the agent sends one."""
    return str(round_no) if slot == 1 else f"{round_no}.{slot}"


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.seeds = self.path / "seeds.json"
        self.rounds = self.path / "rounds"
        self.index = self.path / "runs.jsonl"
        self.requests = self.path / "requests.jsonl"
        self.final = self.path / "final"
        self.summary = self.path / "summary.json"
        self.report = self.path / "report"

    # ---- identity -------------------------------------------------------------------------------

    def prepare(self, identity: dict[str, Any], info: dict[str, Any] | None = None) -> bool:
        """Create the run directory, or check that it belongs to the same run (same identity;
        `info` is recorded but not compared). True if resuming."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        if self.config.is_file():
            stored = read_json(self.config).get("identity", {})
            diff = sorted(k for k in set(stored) | set(identity)
                          if stored.get(k) != identity.get(k))
            if diff:
                detail = "; ".join(f"{k}: run has {stored.get(k)!r}, now {identity.get(k)!r}"
                                   for k in diff[:4])
                raise ConfigError(
                    f"{self.path} belongs to a different run ({detail}); use a new --run-dir, or "
                    "rerun with the original settings to resume")
            self.recover()
            return True
        write_json(self.config, {"identity": identity, "info": dict(info or {}),
                                 "autotts_version": __version__, "created": round(time.time(), 3)})
        fsync_dir(self.path)
        self.rounds.mkdir(exist_ok=True)
        return False

    def lock(self) -> None:
        """One process per run directory: an advisory lock held until this process exits (the
        kernel drops it even on SIGKILL, so a killed run never blocks its rerun)."""
        if getattr(self, "_lock_fd", None) is not None:
            return
        path = self.path / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder deletes the file when it is done (unlock): a lock taken on a file that
            # was deleted meanwhile guards nothing, so check we hold the one at `path`.
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise OSError
        except OSError:
            os.close(fd)
            raise ConfigError(f"{self.path} is in use by another autotts discover process") from None
        self._lock_fd: int | None = fd

    def unlock(self) -> None:
        """Release the lock and remove the lock file (no empty .lock stays behind). Deleted
        while still held, so no other process can take the file in between."""
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path / ".lock")
            os.close(fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    # ---- recovery -------------------------------------------------------------------------------

    def recover(self) -> None:
        """Discard half-built rounds / final step and bring the index up to the round dirs."""
        self.rounds.mkdir(exist_ok=True)
        for p in list(self.rounds.iterdir()) + list(self.path.iterdir()):
            if p.is_dir() and p.name.startswith(".") and ".tmp-" in p.name:
                shutil.rmtree(p, ignore_errors=True)
        done = self.completed()
        if done and done != list(range(1, len(done) + 1)):
            raise ConfigError(f"{self.rounds}: round directories {done} are not contiguous from 1; "
                              "the run directory was edited by hand")
        repair_jsonl(self.index)
        indexed = {(e.get("round"), e.get("slot", 1)) for e in read_jsonl(self.index)
                   if e.get("kind") == "round"}
        extra = sorted({r for r, _ in indexed if isinstance(r, int) and r not in done})
        if extra:
            raise ConfigError(f"{self.index} lists round(s) {extra} that have no directory; the "
                              "run directory was edited by hand")
        for n in done:
            for rec in self.load_round(n):
                if (n, rec["slot"]) not in indexed:
                    append_jsonl(self.index, index_entry(rec))
        if self.final.is_dir() and not any(e.get("kind") == "final"
                                           for e in read_jsonl(self.index)):
            append_jsonl(self.index, final_entry(read_json(self.final / "selection.json")))

    # ---- rounds -----------------------------------------------------------------------------------

    def completed(self) -> list[int]:
        if not self.rounds.is_dir():
            return []
        return sorted(int(p.name) for p in self.rounds.iterdir()
                      if p.is_dir() and ROUND_RE.match(p.name))

    def round_dir(self, n: int) -> Path:
        return self.rounds / f"{n:04d}"

    def begin(self, name: str, parent: Path) -> Path:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-"))
        # mkdtemp makes it 0700; a round or final directory is as readable as any other
        # directory the user creates (the umask decides).
        os.chmod(tmp, 0o777 & ~current_umask())
        return tmp

    def begin_round(self, n: int) -> Path:
        return self.begin(f"{n:04d}", self.rounds)

    def _commit(self, tmp: Path, target: Path) -> None:
        for d in [tmp, *(p for p in tmp.iterdir() if p.is_dir())]:
            for f in d.iterdir():
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            fsync_dir(d)
        if target.exists():
            raise ConfigError(f"{target} already exists: two discover processes on one run dir?")
        os.rename(tmp, target)
        fsync_dir(target.parent)

    def commit_round(self, n: int, tmp: Path) -> None:
        self._commit(tmp, self.round_dir(n))

    def append_index(self, entry: dict[str, Any]) -> None:
        append_jsonl(self.index, {**entry, "time": round(time.time(), 3)})

    def load_round(self, n: int) -> list[dict[str, Any]]:
        """A completed round as the loop's history records, one per candidate slot."""
        d = self.round_dir(n)
        cost = read_json(d / "cost.json")
        slots = sorted(int(m.group(1)) for p in d.iterdir()
                       if p.is_dir() and (m := SLOT_RE.match(p.name)))
        if slots != list(range(1, len(slots) + 1)):
            raise ConfigError(f"{d}: candidate directories c{slots} are not c1, c2, ... in "
                              "order; the run directory was edited by hand")
        recs = []
        for j in slots:
            c = slot_dir(d, j)
            rec = dict(read_json(c / "results.json"))
            rec["round"], rec["slot"], rec["id"] = n, j, candidate_id(n, j)
            rec["verdict"] = read_json(c / "verdict.json")
            rec["digest"] = read_json(c / "digest.json")
            # The round's requests (the proposal, every critic call) are charged to its first
            # candidate, so that sums over candidates are sums over requests.
            rec["cost"] = cost if j == 1 else {}
            cand = c / "candidate.py"
            rec["source"] = cand.read_text() if cand.is_file() else None
            printed = c / "stdout.txt"
            rec["stdout"] = printed.read_text(errors="replace") if printed.is_file() else ""
            critic = c / "critic.json"
            rec["critic"] = read_json(critic).get("review") if critic.is_file() else None
            rec["path"] = str(cand) if cand.is_file() else None
            recs.append(rec)
        return recs

    # ---- the final step ---------------------------------------------------------------------------

    def final_done(self) -> bool:
        return (self.final / "selection.json").is_file()

    def begin_final(self) -> Path:
        return self.begin("final", self.path)

    def commit_final(self, tmp: Path) -> None:
        self._commit(tmp, self.final)


def index_entry(rec: dict[str, Any]) -> dict[str, Any]:
    v = rec["verdict"]
    cost = rec.get("cost") or {}
    return {"kind": "round", "round": rec["round"], "slot": rec["slot"], "id": rec["id"],
            "name": rec.get("name"),
            "verdict": v["kind"], "stage": v["stage"], "objective": rec.get("objective"),
            "eligible": bool(rec.get("eligible")), "cost_usd": cost.get("cost_usd"),
            "prompt_tokens": cost.get("prompt_tokens"),
            "completion_tokens": cost.get("completion_tokens")}


def final_entry(selection: dict[str, Any]) -> dict[str, Any]:
    sel = selection.get("selected") or {}
    return {"kind": "final", "selected_round": sel.get("round"), "selected_id": sel.get("id"),
            "selected": sel.get("name"),
            "search_objective": sel.get("objective"),
            "heldout_objective": selection.get("heldout_objective")}
