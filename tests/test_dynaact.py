"""The DynaAct controller family (issue 7): the set function and its greedy step, the trained
utility (file, embedding in the controller, training on the search split only), and that the
learned utility beats untrained ones."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autotts import controller as ctl
from autotts.dynaact_train import (
    BEGIN_MARK,
    END_MARK,
    TrainConfig,
    Utility,
    controller_module,
    embed_in_controller,
    embedded_utility,
    load_utility,
    save_utility,
    train,
)
from autotts.envdef import load_env
from autotts.errors import ConfigError
from autotts.evaluate import EvalProtocol, evaluate
from autotts.paths import controllers_dir
from autotts.sandbox.admission import admit
from autotts.synth import SynthParams, write_synthetic
from tests.conftest import branch, make_store, reference_file

D = controller_module("dynaact")
UTILITY_FILE = controllers_dir() / "dynaact_utility.json"
BOUND = 1.0 - 1.0 / math.e


def marginal(gain, dist, s, e, lam, diversity="nn"):
    return (D.set_value(gain, dist, [*s, e], lam, diversity)
            - D.set_value(gain, dist, s, lam, diversity))


def random_chain(rng, n):
    """Random S ⊆ T and e ∉ T over n elements."""
    perm = [int(i) for i in rng.permutation(n)]
    e, rest = perm[0], perm[1:]
    t = [i for i in rest if rng.random() < 0.6]
    s = [i for i in t if rng.random() < 0.5]
    return s, t, e


def equidistant(rng, n):
    """One-hot embeddings in random positive scale: every pairwise cosine distance is 1."""
    return np.eye(n) * rng.uniform(0.1, 1.0, n)[:, None]


# ---- the set function -------------------------------------------------------------------------


def test_diminishing_returns_where_the_theory_says_so():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 9))
        gain = rng.uniform(0.0, 1.0, n)
        s, t, e = random_chain(rng, n)
        lam = float(rng.uniform(0.0, 1.0))
        # (1) equidistant embeddings: the diversity term is modular, F is submodular.
        dist = D.cosine_distances(equidistant(rng, n))
        assert marginal(gain, dist, s, e, lam) >= marginal(gain, dist, t, e, lam) - 1e-12
        # (2) any embeddings, λ = 1: F is modular.
        dist = D.cosine_distances(rng.uniform(0.0, 1.0, (n, 4)) + 1e-3)
        assert marginal(gain, dist, s, e, 1.0) == pytest.approx(marginal(gain, dist, t, e, 1.0))
        # (3) any embeddings, first step: with min over ∅ = d0 = the largest distance, adding to
        # the empty set is worth at least as much as adding to any singleton.
        a = t[0] if t else s[0] if s else None
        if a is not None:
            assert marginal(gain, dist, [], e, lam) >= marginal(gain, dist, [a], e, lam) - 1e-12


def test_diminishing_returns_fail_in_general_and_the_greedy_guard_holds():
    """With clustered embeddings (what branch features look like) F is not submodular; the
    guarded greedy still never lowers F along its path and beats the best singleton."""
    rng = np.random.default_rng(1)
    violations = 0
    for _ in range(200):
        n = int(rng.integers(3, 10))
        m = int(rng.integers(1, n))
        e = D.embed(rng.choice([0.1, 0.3, 0.6], m), rng.integers(1, 9, m).astype(float),
                    rng.integers(1, 30, m).astype(float), rng.choice([0.0, 0.5, 1.0], m),
                    rng.random(m) < 0.5, rng.random(m) < 0.2, n - m)
        dist = D.cosine_distances(e)
        gain = rng.uniform(0.0, 1.0, n)
        gain /= gain.max()
        lam = float(rng.uniform(0.0, 1.0))
        s, t, x = random_chain(rng, n)
        violations += marginal(gain, dist, s, x, lam) < marginal(gain, dist, t, x, lam) - 1e-12
        k = int(rng.integers(1, n + 1))
        picks = D.greedy_select(gain, dist, k, lam)
        assert len(picks) <= k and len(set(picks)) == len(picks)
        path = [D.set_value(gain, dist, picks[:i], lam) for i in range(len(picks) + 1)]
        assert all(b > a for a, b in itertools.pairwise(path))
        best_single = max(D.set_value(gain, dist, [i], lam) for i in range(n))
        assert path[-1] >= best_single - 1e-12
    assert violations > 0  # the documented reason for the guard


def brute_force(gain, dist, k, lam, diversity="nn"):
    n = len(gain)
    return max(D.set_value(gain, dist, c, lam, diversity)
               for r in range(k + 1) for c in itertools.combinations(range(n), r))


def test_greedy_reaches_1_minus_1_over_e_of_the_optimum_on_small_instances():
    rng = np.random.default_rng(2)
    worst = 1.0
    for trial in range(150):
        n = int(rng.integers(2, 9))
        k = int(rng.integers(1, 5))
        gain = rng.uniform(0.0, 1.0, n)
        if trial % 2:  # submodular instance: equidistant embeddings, any λ
            dist, lam = D.cosine_distances(equidistant(rng, n)), float(rng.uniform(0.0, 1.0))
        else:  # modular instance: any embeddings, λ = 1
            dist, lam = D.cosine_distances(rng.uniform(0.0, 1.0, (n, 5)) + 1e-3), 1.0
        opt = brute_force(gain, dist, k, lam)
        got = D.set_value(gain, dist, D.greedy_select(gain, dist, k, lam), lam)
        assert got >= BOUND * opt - 1e-12
        worst = min(worst, got / opt)
    assert worst >= BOUND


# ---- the log-determinant diversity (diversity="logdet"): provably submodular -----------------


def branch_like(rng, n):
    """Embeddings of n candidate actions as the controller builds them: a few running branches
    with clustered features (shared answers, depths, stabilities) and identical new-branch copies."""
    m = int(rng.integers(1, n))
    return D.embed(rng.choice([0.1, 0.3, 0.6], m), rng.integers(1, 9, m).astype(float),
                   rng.integers(1, 30, m).astype(float), rng.choice([0.0, 0.5, 1.0], m),
                   rng.random(m) < 0.5, rng.random(m) < 0.2, n - m)


def random_instance(rng, n, kind):
    """(gain, dist) with gains scaled to (0, 1] as the controller does; three embedding kinds."""
    if kind == 0:
        e = branch_like(rng, n)
    elif kind == 1:  # sparse non-negative: many orthogonal pairs, some near-duplicates
        e = rng.uniform(0.0, 1.0, (n, 4)) * (rng.random((n, 4)) < 0.5) + 1e-3
    else:  # exact duplicates: a few distinct rows, repeated
        e = rng.uniform(0.0, 1.0, (3, 5))[rng.integers(0, 3, n)]
    gain = rng.uniform(0.01, 1.0, n)
    return gain / gain.max(), D.cosine_distances(e)


def test_logdet_diversity_is_monotone_submodular_where_nn_is_not():
    """Diminishing returns, checked on random chains S ⊆ T, e ∉ T, including the clustered
    branch-like embeddings on which the nearest-neighbour term fails; every gain is >= 0."""
    rng = np.random.default_rng(3)
    nn_violations = 0
    for trial in range(600):
        n = int(rng.integers(3, 10))
        gain, dist = random_instance(rng, n, trial % 3)
        lam = float(rng.uniform(0.0, 1.0))
        s, t, e = random_chain(rng, n)
        at_s = marginal(gain, dist, s, e, lam, "logdet")
        at_t = marginal(gain, dist, t, e, lam, "logdet")
        assert at_s >= at_t - 1e-9, (trial, s, t, e)
        assert at_t >= -1e-9  # monotone
        # the diversity part alone (λ = 0): log det(I + α·K) is itself monotone submodular
        assert marginal(gain, dist, s, e, 0.0, "logdet") >= (
            marginal(gain, dist, t, e, 0.0, "logdet") - 1e-9)
        nn_violations += marginal(gain, dist, s, e, lam) < marginal(gain, dist, t, e, lam) - 1e-12
    assert nn_violations > 0  # the same chains break the default term


def test_logdet_matches_nn_on_equidistant_embeddings_and_scales_like_it():
    rng = np.random.default_rng(4)
    for _ in range(50):
        n = int(rng.integers(1, 8))
        gain, dist = rng.uniform(0.0, 1.0, n), D.cosine_distances(equidistant(rng, n))
        lam = float(rng.uniform(0.0, 1.0))
        chosen = list(range(n))
        assert D.set_value(gain, dist, chosen, lam, "logdet") == pytest.approx(
            D.set_value(gain, dist, chosen, lam))
    # A singleton is worth d0 = 1 of diversity; an exact duplicate adds log((1+2α)/(1+α)) > 0.
    dist = np.zeros((2, 2))
    zero = np.zeros(2)
    assert D.set_value(zero, dist, [0], 0.0, "logdet") == pytest.approx(1.0)
    alpha = D.LOGDET_ALPHA
    assert marginal(zero, dist, [0], 1, 0.0, "logdet") == pytest.approx(
        math.log((1 + 2 * alpha) / (1 + alpha)))


def test_logdet_greedy_is_the_exact_greedy_and_reaches_1_minus_1_over_e():
    """The incremental (Cholesky) greedy picks, at every step, an element of largest marginal
    gain as computed from determinants; its set is within (1 − 1/e) of the brute-force optimum
    (the Nemhauser–Wolsey–Fisher guarantee, which holds here because F is monotone submodular)."""
    rng = np.random.default_rng(5)
    worst = 1.0
    for trial in range(240):
        n = int(rng.integers(2, 9))
        k = int(rng.integers(1, 6))
        gain, dist = random_instance(rng, n, trial % 3)
        lam = float(rng.uniform(0.0, 0.99))
        picks = D.greedy_select(gain, dist, k, lam, "logdet")
        assert len(picks) == min(k, n) and len(set(picks)) == len(picks)  # monotone: fills up
        for i, c in enumerate(picks):
            best = max(marginal(gain, dist, picks[:i], e, lam, "logdet")
                       for e in range(n) if e not in picks[:i])
            assert marginal(gain, dist, picks[:i], c, lam, "logdet") >= best - 1e-8
        opt = brute_force(gain, dist, k, lam, "logdet")
        got = D.set_value(gain, dist, picks, lam, "logdet")
        assert got >= BOUND * opt - 1e-12
        worst = min(worst, got / opt)
    assert worst >= BOUND


def test_greedy_lambda_one_is_top_k():
    gain = np.array([0.2, 0.9, 0.0, 0.9, 0.5])
    dist = np.ones((5, 5)) - np.eye(5)
    assert D.greedy_select(gain, dist, 3, 1.0) == [1, 3, 4]
    assert D.greedy_select(gain, dist, 9, 1.0) == [1, 3, 4, 0]  # a zero gain is not taken


# ---- the controller ---------------------------------------------------------------------------


def tiny_store():
    return make_store(
        [
            ("A", [branch(["x", "A", "A"], 31, "A"), branch(["B"], 12, "B"),
                   branch([], 4, "A"), branch(["ERR", "A"], 25, "A")] * 4),
            ("B", [branch(["B", "B"], 25, "B"), branch(["C", "C", "C"], 33, "C")] * 5),
        ]
    )


def test_schedule_is_monotone_in_budget():
    spec = ctl.load("dynaact")
    grid = [spec.schedule(i / 20) for i in range(21)]
    for a, b in itertools.pairwise(grid):
        for key in ("k", "n_init", "max_branches", "max_rounds", "burst"):
            assert b[key] >= a[key]
        assert b["tau"] <= a["tau"]  # a lower bar: more actions are worth taking
    assert spec.schedule(-3.0) == spec.schedule(0.0) and spec.schedule(7.0) == spec.schedule(1.0)
    assert "utility" not in grid[0]  # the learned utility is a parameter, not a budget knob


def test_controller_is_deterministic_and_takes_a_utility_knob():
    store = tiny_store()
    proto = EvalProtocol(draws=4)
    a = evaluate("dynaact", [store], [0.0, 0.5, 1.0], proto, episodes=True)
    b = evaluate("dynaact", [store], [0.0, 0.5, 1.0], proto, episodes=True)
    assert a.rows == b.rows and a.episodes == b.episodes and a.errors == []
    w = ",".join(str(x) for x in D.TRAINED_UTILITY)  # what `--set utility=...` passes
    c = evaluate("dynaact", [store], [0.5], proto, overrides={"utility": w})
    assert c.rows[0]["accuracy"] == a.rows[1]["accuracy"]
    assert c.rows[0]["tokens"] == a.rows[1]["tokens"]
    # ... and is not ignored: other weights, in the same string form, act differently.
    neg = ",".join(str(-x) for x in D.TRAINED_UTILITY)
    d = evaluate("dynaact", [store], [0.5], proto, overrides={"utility": neg})
    assert d.rows[0]["tokens"] != a.rows[1]["tokens"]
    with pytest.raises(ValueError, match=f"{D.NUM_WEIGHTS} finite numbers"):
        D.DynaAct(utility=[1.0, 2.0])


def test_the_logdet_variant_runs_the_same_in_the_sandbox_and_checks_its_knob():
    from autotts.sandbox import SandboxLimits, evaluate_sandboxed

    store = tiny_store()
    proto = EvalProtocol(draws=4)
    kw = dict(overrides={"diversity": "logdet"}, episodes=True)
    a = evaluate("dynaact", [store], [0.0, 0.5, 1.0], proto, **kw)
    b = evaluate_sandboxed("dynaact", [store], [0.0, 0.5, 1.0], proto, **kw,
                           limits=SandboxLimits(wall_seconds=60, cpu_seconds=40))
    assert a.errors == [] and a.rows == b.rows and a.episodes == b.episodes
    nn = evaluate("dynaact", [store], [0.0, 0.5, 1.0], proto)
    assert nn.rows != a.rows  # the knob is not ignored
    with pytest.raises(ValueError, match="diversity must be one of nn, logdet"):
        D.DynaAct(diversity="cosine")


def test_the_controller_file_is_admitted_by_the_sandbox():
    path = ctl.resolve("dynaact")
    assert admit(path.read_text(), str(path)) is None


# ---- the utility file and its copy in the controller ------------------------------------------


def test_the_shipped_utility_file_is_the_one_embedded_in_the_controller():
    shipped = load_utility(UTILITY_FILE)
    assert embedded_utility(ctl.resolve("dynaact")) == shipped.weights
    assert shipped.fingerprint() in D.UTILITY_INFO
    assert all("aime24" in s for s in shipped.stores)  # trained on the search split only


def test_missing_or_corrupt_utility_file_fails_clearly(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"nope\.json: no such DynaAct utility file"):
        load_utility(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json: not a DynaAct utility file"):
        load_utility(bad)
    short = tmp_path / "short.json"
    good = json.loads(UTILITY_FILE.read_text())
    short.write_text(json.dumps({**good, "weights": good["weights"][:-1]}))
    with pytest.raises(ConfigError, match=r"short\.json: corrupt DynaAct utility file"):
        load_utility(short)
    nan = tmp_path / "nan.json"
    nan.write_text(json.dumps({**good, "weights": [float("nan")] * len(good["weights"])}))
    with pytest.raises(ConfigError, match="corrupt"):
        load_utility(nan)
    # The command line: one line, naming the file, non-zero exit.
    proc = subprocess.run(
        [sys.executable, "-c", "from autotts.cli import main; main()", "train-dynaact",
         "--load", str(bad), "--out", str(tmp_path / "o.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "bad.json" in proc.stderr


def test_embedding_a_utility_rewrites_only_the_marked_block(tmp_path):
    src = ctl.resolve("dynaact")
    copy = tmp_path / "dynaact_copy.py"
    copy.write_text(src.read_text())
    w = [round(0.001 * i - 0.03, 6) for i in range(D.NUM_WEIGHTS)]
    u = Utility(weights=w, stores=["toy/search"], config={"seed": 3})
    save_utility(u, tmp_path / "u.json")
    embed_in_controller(load_utility(tmp_path / "u.json"), copy, source="u.json")
    text = copy.read_text()
    assert embedded_utility(copy) == w
    original = src.read_text()
    head = original[: original.index(BEGIN_MARK)]
    tail = original[original.index(END_MARK) :]
    assert text.startswith(head) and text.endswith(tail)
    assert admit(text, str(copy)) is None
    spec = ctl.load(str(copy))
    assert np.allclose(spec.make({}).weights.ravel(), w)
    broken = tmp_path / "no_markers.py"
    broken.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="markers missing"):
        embed_in_controller(u, broken)


# ---- training ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_env(tmp_path_factory):
    """An environment whose search split is a small synthetic store and whose held-out split is a
    file that does not exist: training must never try to open it."""
    d = tmp_path_factory.mktemp("dynaact_env")
    write_synthetic(SynthParams(questions=10, branches=24, seed=5, skill=0.5), d / "search")
    env = d / "env.toml"
    env.write_text(
        '[splits]\nsearch = ["search"]\nheldout = ["held-out-must-not-be-opened"]\n'
    )
    return load_env(env)


SMALL = TrainConfig(seed=7, draws=2, collections=2, iterations=10)


def test_training_is_deterministic_and_reads_only_the_search_split(synthetic_env, monkeypatch):
    import autotts.dynaact_train as tr

    opened = []
    real = tr.open_store
    monkeypatch.setattr(tr, "open_store", lambda p, *a, **k: opened.append(str(p)) or real(p))
    a = train(synthetic_env, SMALL)
    b = train(synthetic_env, SMALL)
    assert a.weights == b.weights and a.value_weights == b.value_weights
    assert len(a.weights) == D.NUM_WEIGHTS and any(w != 0 for w in a.weights)
    assert opened and all(p.endswith("search") for p in opened)
    c = train(synthetic_env, TrainConfig(seed=8, draws=2, collections=2, iterations=10))
    assert c.weights != a.weights


def test_cli_trains_and_embeds(synthetic_env, tmp_path):
    copy = tmp_path / "dynaact_cli.py"
    copy.write_text(ctl.resolve("dynaact").read_text())
    out = tmp_path / "u.json"
    proc = subprocess.run(
        [sys.executable, "-c", "from autotts.cli import main; main()", "train-dynaact",
         "--env", synthetic_env.path, "--out", str(out), "--controller", str(copy),
         "--draws", "1", "--collections", "1", "--seed", "3"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "collection 1/1" in proc.stderr  # progress goes to stderr
    assert embedded_utility(copy) == load_utility(out).weights


def reward(rows, cost):
    """The training objective on evaluation rows: accuracy − c·tokens (accuracy as a fraction)."""
    return float(np.mean([r["accuracy"] / 100.0 - cost * r["tokens"] for r in rows]))


@pytest.mark.reference
@pytest.mark.slow
def test_learned_utility_beats_untrained_ones_on_the_search_split():
    reference_file("Qwen3-8B/aime24.json")  # skip (or, under CI, fail) without the data
    env = load_env("aime-qwen3")
    stores = [reference_file(Path(p).parent.name + "/" + Path(p).name) for p in
              env.split_paths("search")]
    shipped = load_utility(UTILITY_FILE)
    cost = float(shipped.config["token_cost"])
    proto = EvalProtocol(draws=3)

    def score(utility):
        rows = evaluate("dynaact", stores, [0.25, 0.75], proto, overrides={"utility": utility},
                        workers=2).rows
        return reward(rows, cost)

    learned = score(shipped.weights)
    rng = np.random.default_rng(0)
    n = D.NUM_WEIGHTS
    uniform = [0.0] * n
    uniform[0] = 0.1  # every action equally useful: diversity alone picks, caps stop
    untrained = {
        "zero": [0.0] * n,
        "uniform": uniform,
        "random": list(rng.normal(0.0, 0.05, n)),
    }
    for name, w in untrained.items():
        assert learned > score(w), name
