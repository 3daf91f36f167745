"""Summary statistics of a store (`autotts inspect`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc

from autotts.store import Store


def majority_first_seen(classes: np.ndarray) -> int:
    """Most frequent class >= 0, ties to the first seen; -1 if there is none."""
    classes = classes[classes >= 0]
    if len(classes) == 0:
        return -1
    values, first, counts = np.unique(classes, return_index=True, return_counts=True)
    best = counts == counts.max()
    return int(values[best][np.argmin(first[best])])


def summarize(store: Store) -> dict[str, Any]:
    """Per-store figures. pass@1 is the mean over questions of the share of branches whose final
    answer is right; majority accuracy votes over all branches' finals (ties: first seen; 'no
    answer' classes do not vote). Percentages are 0-100."""
    data = store.replay()
    gold = store.gold_classes()
    tokens = data.tokens.astype(np.int64)
    n_probes = np.diff(data.probe_offsets)
    per_q = np.diff(data.branch_offsets)
    qidx = np.repeat(np.arange(data.num_questions), per_q)
    right = data.final_class == gold[qidx]
    pass1 = np.bincount(qidx, weights=right, minlength=data.num_questions) / per_q
    maj = np.array(
        [
            majority_first_seen(data.final_class[data.branch_offsets[q] : data.branch_offsets[q + 1]])
            for q in range(data.num_questions)
        ]
    )
    probes = store.branches.column("probe_answers").combine_chunks().flatten()
    finals = store.branches.column("final_answer")
    err_probe = pc.sum(pc.equal(pc.utf8_trim_whitespace(probes), "ERR")).as_py() or 0
    err_final = pc.sum(pc.equal(pc.utf8_trim_whitespace(finals), "ERR")).as_py() or 0
    over = n_probes * data.delta > tokens
    return {
        "store": store.name,
        "path": store.path,
        "answer_mode": store.answer_mode,
        "delta": data.delta,
        "questions": data.num_questions,
        "branches": len(tokens),
        "branches_per_question": {
            "min": int(per_q.min()), "mean": float(per_q.mean()), "max": int(per_q.max())
        },
        "tokens": {
            "mean": float(tokens.mean()),
            "median": float(np.median(tokens)),
            "max": int(tokens.max()),
        },
        "probes_per_branch": {
            "mean": float(n_probes.mean()),
            "median": float(np.median(n_probes)),
            "max": int(n_probes.max()),
        },
        "err_share_probes": 100.0 * err_probe / max(1, len(probes)),
        "err_share_finals": 100.0 * err_final / max(1, len(finals)),
        "probes_beyond_tokens_share": 100.0 * float(over.mean()),
        "pass_at_1": 100.0 * float(pass1.mean()),
        "majority_accuracy": 100.0 * float(np.mean(maj == gold)),
    }
