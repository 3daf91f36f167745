"""Question sources: local JSONL files and named benchmarks from Hugging Face datasets.

JSONL, one object per line, in either of two shapes:
* `{"id": ..., "question": "...", "answer": "..."}` (the simple format; `problem` also works for
  `question`);
* the shared question sets' format `{"idx": ..., "prompt": "...", "reference_solution": "..."}`,
  whose gold answer is the text after the last `####` (the whole solution when there is none).

A bad file fails with one line naming the file, the line and the field.

Named benchmarks (`aime24`, `aime25`, `hmmt25_feb`, `math500`, `gsm8k`, `gpqa_diamond`) are read
with the `datasets` package when Hugging Face is reachable; otherwise the error says how to use a
JSONL file instead.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotts.errors import QuestionError


@dataclass(frozen=True)
class SourceQuestion:
    index: int  # position in the source: the store's question_idx
    id: str  # the source's id, stable across shards and reruns (seeds derive from it)
    text: str
    gold: str


@dataclass(frozen=True)
class QuestionSet:
    name: str  # benchmark name (named source) or file stem
    questions: list[SourceQuestion]
    source: dict[str, Any]  # how to find the questions again: file + sha256, or dataset + split


def gold_from_solution(solution: str) -> str:
    """The shared sets' gold: the text after the last `####`, else the whole solution."""
    if "####" in solution:
        return solution.rsplit("####", 1)[1].strip()
    return solution.strip()


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int)) and not isinstance(v, bool)


def read_jsonl(path: str | Path) -> QuestionSet:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise QuestionError(f"{path}: cannot read: {e.strerror or e}") from None
    questions: list[SourceQuestion] = []
    seen: dict[str, int] = {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise QuestionError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise QuestionError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise QuestionError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        q_key = next((k for k in ("question", "problem", "prompt") if k in obj), None)
        if q_key is None:
            raise QuestionError(f"{where}: field 'question': missing (or 'prompt'/'problem')")
        q_text = obj[q_key]
        if not isinstance(q_text, str) or not q_text.strip():
            raise QuestionError(f"{where}: field '{q_key}': expected a non-empty string")
        if "answer" in obj:
            gold_v = obj["answer"]
            if not _scalar(gold_v):
                raise QuestionError(f"{where}: field 'answer': expected a string or integer, "
                                    f"got {type(gold_v).__name__}")
            gold = str(gold_v).strip()
        elif "reference_solution" in obj:
            sol = obj["reference_solution"]
            if not isinstance(sol, str):
                raise QuestionError(f"{where}: field 'reference_solution': expected a string")
            gold = gold_from_solution(sol)
        else:
            raise QuestionError(f"{where}: field 'answer': missing (or 'reference_solution')")
        id_key = next((k for k in ("id", "idx") if k in obj), None)
        if id_key is None:
            qid = str(len(questions))
        else:
            if not _scalar(obj[id_key]):
                raise QuestionError(f"{where}: field '{id_key}': expected a string or integer")
            qid = str(obj[id_key])
        if qid in seen:
            raise QuestionError(f"{where}: field '{id_key or 'id'}': duplicate id {qid!r} "
                                f"(first on line {seen[qid]})")
        seen[qid] = lineno
        questions.append(SourceQuestion(len(questions), qid, q_text, gold))
    if not questions:
        raise QuestionError(f"{path}: no questions in the file")
    source = {"kind": "jsonl", "file": path.name, "sha256": hashlib.sha256(raw).hexdigest()}
    return QuestionSet(path.stem, questions, source)


# ------------------------------------------------------------------------------------------------
# Named benchmarks (Hugging Face datasets)


@dataclass(frozen=True)
class Benchmark:
    repo: str
    config: str | None
    split: str
    question: str
    answer: str
    id: str | None = None


BENCHMARKS: dict[str, Benchmark] = {
    "aime24": Benchmark("HuggingFaceH4/aime_2024", None, "train", "problem", "answer", "id"),
    "aime25": Benchmark("math-ai/aime25", None, "test", "problem", "answer", "id"),
    "hmmt25_feb": Benchmark("MathArena/hmmt_feb_2025", None, "train", "problem", "answer",
                            "problem_idx"),
    "math500": Benchmark("HuggingFaceH4/MATH-500", None, "test", "problem", "answer",
                         "unique_id"),
    "gsm8k": Benchmark("openai/gsm8k", "main", "test", "question", "answer"),
    "gpqa_diamond": Benchmark("Idavidrein/gpqa", "gpqa_diamond", "train", "Question",
                              "Correct Answer"),
}
GPQA_SHUFFLE_SEED = 0


def gpqa_question(row: dict[str, Any], qid: str, seed: int = GPQA_SHUFFLE_SEED) -> tuple[str, str]:
    """GPQA with its four options shuffled by a fixed per-question seed; the gold is the letter."""
    options = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"],
               row["Incorrect Answer 3"]]
    order = list(range(4))
    random.Random(f"{seed}:{qid}").shuffle(order)
    letters = "ABCD"
    body = "\n".join(f"({letters[i]}) {str(options[j]).strip()}" for i, j in enumerate(order))
    gold = letters[order.index(0)]
    return f"{str(row['Question']).strip()}\n\n{body}", gold


def load_benchmark(name: str) -> QuestionSet:
    b = BENCHMARKS[name]
    hint = "download it where Hugging Face is reachable and pass a JSONL file (--questions FILE)"
    try:
        import datasets
    except ImportError:
        raise QuestionError(
            f"benchmark {name!r} ({b.repo}) needs the 'datasets' package "
            f"(pip install datasets), or {hint}"
        ) from None
    try:
        ds = datasets.load_dataset(b.repo, b.config, split=b.split)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise QuestionError(f"cannot load benchmark {name!r} from Hugging Face ({b.repo}): "
                            f"{msg[:200]}; {hint}") from None
    questions = []
    for i, row in enumerate(ds):
        qid = str(row[b.id]) if b.id and b.id in row else str(i)
        if name == "gpqa_diamond":
            text, gold = gpqa_question(row, qid)
        else:
            text = str(row[b.question])
            gold = gold_from_solution(str(row[b.answer])) if name == "gsm8k" else str(row[b.answer]).strip()
        questions.append(SourceQuestion(i, qid, text, gold))
    fingerprint = getattr(ds, "_fingerprint", None)
    source = {"kind": "huggingface", "dataset": b.repo, "config": b.config, "split": b.split,
              "fingerprint": fingerprint}
    if name == "gpqa_diamond":
        source["option_shuffle_seed"] = GPQA_SHUFFLE_SEED
    return QuestionSet(name, questions, source)


def load_questions(spec: str) -> QuestionSet:
    """A JSONL file path, or a benchmark name from `BENCHMARKS`."""
    p = Path(spec)
    if p.is_file():
        return read_jsonl(p)
    if spec in BENCHMARKS:
        return load_benchmark(spec)
    if p.suffix or "/" in spec:
        raise QuestionError(f"{spec}: no such question file")
    raise QuestionError(f"unknown question source {spec!r}: give a JSONL file or one of "
                        f"{', '.join(BENCHMARKS)}")


def questions_sha256(qs: QuestionSet) -> str:
    """A hash of what is collected (ids, texts, golds): resumes must see the same questions."""
    h = hashlib.sha256()
    for q in qs.questions:
        h.update(json.dumps([q.id, q.text, q.gold]).encode())
    return h.hexdigest()
