"""autotts.stats: the paired question bootstrap (issue 15).

Fast tests check the arithmetic against the project's own objective, determinism and pairing, and
the behaviour at known effects; the coverage simulations (a few hundred replications each) check
that the intervals cover the true difference at close to the nominal rate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from autotts import metrics, stats
from autotts.discover.candidates import objective
from autotts.errors import ConfigError
from autotts.evaluate import EvalProtocol, evaluate
from autotts.metrics import auc_log_tokens
from autotts.synth import SynthParams, generate

BETAS = [round(0.1 * i, 1) for i in range(11)]
BENCHES = ("aime24", "aime25")


# ---- the vectorized objective ---------------------------------------------------------------------


def test_auc_batch_equals_auc_log_tokens() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        b = int(rng.integers(1, 8))
        t = np.exp(rng.uniform(np.log(1e3), np.log(5e6), size=(4, b)))
        if b > 2:  # ties: two points at equal tokens are averaged
            t[:, 1] = t[:, 0]
        a = rng.uniform(0, 100, size=(4, b))
        lo = float(np.exp(rng.uniform(np.log(1e3), np.log(1e6))))
        hi = lo * float(np.exp(rng.uniform(0, 4))) if rng.random() > 0.1 else lo
        got = metrics.auc_log_tokens_batch(t, a, lo, hi)
        want = [auc_log_tokens(t[k], a[k], lo, hi) for k in range(4)]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


# ---- on real evaluations of synthetic stores -------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated() -> dict[str, object]:
    stores = [generate(SynthParams(questions=10, branches=12, seed=k, model="synth",
                                   benchmark=f"b{k}")) for k in (1, 2)]
    out: dict[str, object] = {"stores": stores}
    for name in ("sc", "parallel_probe"):
        ev = evaluate(name, stores, BETAS[::2], EvalProtocol(draws=4), episodes=True)
        out[name] = ev
    return out


def test_point_estimates_are_the_objective_and_the_rows(evaluated: dict) -> None:
    """The AUC the intervals are for is the number discovery prints, and the β figures are
    eval's rows."""
    tr = (2000.0, 200000.0)
    ev_a, ev_b = evaluated["parallel_probe"], evaluated["sc"]
    ca = stats.curves_from_episodes(ev_a.episodes)
    cb = stats.curves_from_episodes(ev_b.episodes)
    names = [s.name for s in evaluated["stores"]]
    cmp = stats.compare(ca, cb, tr, resamples=300)
    obj_a, per_a = objective(ev_a.rows, names, tr)
    obj_b, per_b = objective(ev_b.rows, names, tr)
    assert cmp.pooled_a.estimate == pytest.approx(obj_a, abs=1e-6)
    assert cmp.pooled_b.estimate == pytest.approx(obj_b, abs=1e-6)
    for s in names:
        assert cmp.auc_a[s].estimate == pytest.approx(per_a[s], abs=1e-6)
        assert cmp.stores[s].estimate == pytest.approx(per_a[s] - per_b[s], abs=1e-5)
    assert cmp.pooled.estimate == pytest.approx(obj_a - obj_b, abs=1e-5)
    for (store, _), curve in ca.items():
        rows = [r for r in ev_a.rows if r["store"] == store]
        for r, iv in zip(rows, stats.beta_intervals(curve, resamples=300), strict=True):
            assert iv["beta"] == r["beta"]
            assert iv["accuracy"].estimate == pytest.approx(r["accuracy"], abs=1e-9)
            assert iv["tokens"].estimate == pytest.approx(r["tokens"], rel=1e-12)
            assert iv["accuracy"].low <= r["accuracy"] <= iv["accuracy"].high
            assert iv["tokens"].low <= r["tokens"] <= iv["tokens"].high


def test_embedded_episodes_give_the_same_curves(evaluated: dict, tmp_path) -> None:
    ev = evaluated["sc"]
    payload = stats.episodes_payload(ev.episodes)
    rows = [dict(r, episodes=payload[(r["store"], r["controller"], r["beta"])]) for r in ev.rows]
    path = tmp_path / "sc.json"
    path.write_text(json.dumps(rows))
    a = stats.curves_from_episodes(ev.episodes)
    b = stats.load_curves(path)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].accuracy, b[k].accuracy)
        np.testing.assert_allclose(a[k].tokens, b[k].tokens)
        assert a[k].betas == b[k].betas and a[k].draws == b[k].draws == (4,) * 6


def test_outcome_arrays_give_the_episode_rows_curves_bit_for_bit(evaluated: dict) -> None:
    """`eval` reads its intervals from the outcome arrays, not from a dict per episode: the same
    curves, equal to the last bit, and so the same intervals."""
    for name in ("sc", "parallel_probe"):
        ev = evaluated[name]
        assert len(ev.outcomes) == len(ev.rows)
        a = stats.curves_from_episodes(ev.episodes)
        b = stats.curves_from_outcomes(ev.outcomes)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].betas == b[k].betas and a[k].draws == b[k].draws
            assert np.array_equal(a[k].accuracy, b[k].accuracy)
            assert np.array_equal(a[k].tokens, b[k].tokens)
        rows_a = stats.attach_question_intervals([dict(r) for r in ev.rows], ev.episodes)
        rows_b = stats.attach_question_intervals([dict(r) for r in ev.rows], curves=b)
        assert rows_a == rows_b and "accuracy_ci_questions" in rows_b[0]
    # Two items of one (store, controller, β) pool their draws, as their episode rows do.
    ev = evaluated["sc"]
    twice = ev.outcomes[:1] * 2
    (curve,) = stats.curves_from_outcomes(twice).values()
    (ref,) = stats.curves_from_episodes(ev.episodes[: len(ev.episodes) // len(ev.rows)] * 2
                                        ).values()
    assert curve.draws == ref.draws == (8,)
    assert np.array_equal(curve.accuracy, ref.accuracy)
    with pytest.raises(ConfigError, match="different numbers of draws"):
        store, ctl, beta, correct, tokens = ev.outcomes[0]
        stats.curves_from_outcomes([ev.outcomes[0], (store, ctl, beta, correct[:, :3],
                                                     tokens[:, :3])])


# ---- synthetic curves with a known effect ------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def population(rng: np.random.Generator, n: int, shift: float = 0.0, draws: int | None = 20,
               betas: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """n questions drawn from a population: difficulty z ~ N(0, 1.5); at β the chance of a right
    answer is sigmoid(z + 3β − 1 + shift) and the cost base·e^(3β), base log-normal around 40k.
    Per question the accuracy is the share right in `draws` draws (None: the expectation).
    Returns accuracy % [B, Q] and tokens [B, Q]."""
    z = rng.normal(0.0, 1.5, size=n)
    base = np.exp(rng.normal(math.log(4e4), 0.5, size=n))
    beta = np.linspace(0, 1, betas)[:, None]
    p = _sigmoid(z[None, :] + 3 * beta - 1 + shift)
    acc = p if draws is None else rng.binomial(draws, p) / draws
    tok = base[None, :] * np.exp(3 * beta)
    return acc * 100.0, tok


def curve(store: str, name: str, acc: np.ndarray, tok: np.ndarray) -> stats.Curve:
    b = acc.shape[0]
    return stats.Curve(store, name, tuple(np.linspace(0, 1, b)), acc, tok, (20,) * b)


TR = (5e4, 1.5e6)


def test_identical_controllers_give_zero_inside_the_interval() -> None:
    rng = np.random.default_rng(1)
    acc, tok = population(rng, 30)
    a = [curve(f"s{k}", "A", acc, tok) for k in range(3)]
    b = [curve(f"s{k}", "B", acc.copy(), tok.copy()) for k in range(3)]
    cmp = stats.compare(a, b, TR)
    for d in [*cmp.stores.values(), cmp.pooled]:
        assert d.estimate == 0 and d.contains(0.0) and not d.significant
        assert d.prob_improvement == 0.5 and d.verdict() == "within noise"
    # ... and their own AUC intervals are real ones
    assert cmp.pooled_a.high - cmp.pooled_a.low > 1


def test_a_dominated_controller_is_flagged() -> None:
    """B answers every question at every β less often than A, at the same cost: A is
    significantly better on each store and pooled, and B significantly worse."""
    rng = np.random.default_rng(2)
    a, b = [], []
    for k in range(4):
        acc, tok = population(rng, 30)
        a.append(curve(f"s{k}", "A", acc, tok))
        b.append(curve(f"s{k}", "B", np.maximum(acc - rng.uniform(2, 6, acc.shape), 0), tok))
    cmp = stats.compare(a, b, TR)
    for d in [*cmp.stores.values(), cmp.pooled]:
        assert d.significant and d.low > 0 and d.verdict() == "better"
        assert d.prob_improvement == 1.0
    back = stats.compare(b, a, TR)
    assert back.pooled.verdict() == "worse" and back.pooled.high < 0
    assert back.pooled.estimate == pytest.approx(-cmp.pooled.estimate)
    for m in stats.delta_accuracy_at_tokens(a[0], b[0]):
        assert m[1].significant and m[1].estimate > 0


def test_deterministic_and_paired() -> None:
    acc, tok = population(np.random.default_rng(3), 30)
    acc2, _ = population(np.random.default_rng(3), 30, shift=0.3)  # the same questions
    w1 = stats.question_weights("s", 30, 500, seed=0)
    assert np.array_equal(w1, stats.question_weights("s", 30, 500, seed=0))
    assert not np.array_equal(w1, stats.question_weights("t", 30, 500, seed=0))
    assert not np.array_equal(w1, stats.question_weights("s", 30, 500, seed=1))
    np.testing.assert_allclose(w1.sum(axis=1), 1.0)
    a, b = curve("s", "A", acc, tok), curve("s", "B", acc2, tok)
    one = stats.compare([a], [b], TR, resamples=500)
    two = stats.compare([a], [b], TR, resamples=500)
    assert one == two
    # pairing: a difference's interval is far narrower than the two AUC intervals suggest when
    # the controllers share their hard and easy questions
    d = one.stores["s"]
    assert d.high - d.low < 0.5 * (one.auc_a["s"].high - one.auc_a["s"].low)


def test_question_table_adds_up() -> None:
    """For a curve with one β point the AUC is the mean accuracy, a statistic linear in the
    questions: the contributions are the per-question differences / Q and add up to ΔAUC."""
    rng = np.random.default_rng(4)
    acc, tok = population(rng, 20, betas=1)
    acc2, _ = population(rng, 20, betas=1)
    a, b = curve("s", "A", acc, tok), curve("s", "B", acc2, tok)
    table = stats.question_table(a, b, TR)
    total = sum(r["contribution"] for r in table)
    assert total == pytest.approx(stats.auc(a, TR) - stats.auc(b, TR))
    for r in table:
        assert r["contribution"] == pytest.approx(r["delta_accuracy"] / 20)
        assert r["outcome"] == ("win" if r["delta_accuracy"] > 0 else
                                "loss" if r["delta_accuracy"] < 0 else "tie")


def test_errors_are_one_line() -> None:
    from autotts.errors import ConfigError

    rng = np.random.default_rng(5)
    acc, tok = population(rng, 10)
    with pytest.raises(ConfigError, match="share no store"):
        stats.compare([curve("s", "A", acc, tok)], [curve("t", "B", acc, tok)], TR)
    with pytest.raises(ConfigError, match="not the same store"):
        stats.compare([curve("s", "A", acc, tok)], [curve("s", "B", acc[:, :5], tok[:, :5])], TR)
    with pytest.raises(ConfigError, match="method"):
        stats.auc_interval(curve("s", "A", acc, tok), TR, method="studentized")
    with pytest.raises(ConfigError, match="different numbers of draws"):
        stats.curves_from_episodes([
            {"store": "s", "controller": "c", "beta": 0.0, "question": 0, "correct": True,
             "tokens": 5},
            {"store": "s", "controller": "c", "beta": 0.0, "question": 0, "correct": True,
             "tokens": 5},
            {"store": "s", "controller": "c", "beta": 0.0, "question": 1, "correct": True,
             "tokens": 5},
        ])


# ---- coverage ----------------------------------------------------------------------------------


def true_delta(shift: float, stores: int = 1) -> float:
    """ΔAUC of the population (2·10⁵ questions, expected accuracies): what the intervals
    estimate."""
    rng = np.random.default_rng(99)
    acc, tok = population(rng, 200_000, draws=None)
    acc_b, tok_b = population(np.random.default_rng(99), 200_000, shift=shift, draws=None)
    ta = metrics.auc_log_tokens_batch(tok.mean(axis=1), acc.mean(axis=1), *TR)[0]
    tb = metrics.auc_log_tokens_batch(tok_b.mean(axis=1), acc_b.mean(axis=1), *TR)[0]
    return float(tb - ta)


def coverage(reps: int, method: str, stores: int, resamples: int, seed: int) -> tuple[float, float]:
    """Share of `reps` simulated comparisons whose 95% interval for ΔAUC (pooled over `stores`
    stores of 30 questions) holds the true ΔAUC, and the mean interval width. Controller B is A
    with its logit shifted by 0.25 on every question (paired: same questions, same draws' luck
    in part)."""
    shift = 0.25
    truth = true_delta(shift)
    rng = np.random.default_rng(seed)
    hits, widths = 0, []
    for rep in range(reps):
        a, b = [], []
        for k in range(stores):
            z = rng.normal(0.0, 1.5, size=30)
            base = np.exp(rng.normal(math.log(4e4), 0.5, size=30))
            beta = np.linspace(0, 1, 11)[:, None]
            tok = base[None, :] * np.exp(3 * beta)
            pa = _sigmoid(z[None, :] + 3 * beta - 1)
            pb = _sigmoid(z[None, :] + 3 * beta - 1 + shift)
            a.append(curve(f"r{rep}s{k}", "A", rng.binomial(20, pa) / 20 * 100, tok))
            b.append(curve(f"r{rep}s{k}", "B", rng.binomial(20, pb) / 20 * 100, tok))
        d = stats.compare(b, a, TR, resamples=resamples, method=method).pooled
        hits += d.contains(truth)
        widths.append(d.high - d.low)
    return hits / reps, float(np.mean(widths))


# Tolerance: with n replications the share of hits has sd sqrt(.95·.05/n) (1.5 points at 200,
# 1.0 at 500); a 95% bootstrap interval from 30 questions is also known to run about a point
# short. The fast test allows 0.95 ± 0.05, the slow one 0.95 ± 0.035.
def test_coverage_quick() -> None:
    rate, _ = coverage(200, "bca", stores=1, resamples=500, seed=11)
    assert abs(rate - 0.95) <= 0.05, rate


@pytest.mark.slow
@pytest.mark.parametrize("method", ["bca", "percentile"])
@pytest.mark.parametrize("stores", [1, 4])
def test_coverage(method: str, stores: int) -> None:
    rate, width = coverage(500, method, stores=stores, resamples=2000, seed=12)
    print(f"coverage {method} stores={stores}: {rate:.3f} (mean width {width:.2f})")
    assert abs(rate - 0.95) <= 0.035, rate


# ---- stores that hold the same questions -------------------------------------------------------

_STRENGTH = (-1.5, -0.5, 0.5, 1.5)  # four models of one benchmark, weakest first


def _shared_stores(z: np.ndarray, u: np.ndarray, base: np.ndarray, rng: np.random.Generator | None
                   ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Four models on the same questions (difficulty z, B's per-question edge u, cost base): per
    model A's and B's accuracy % [B, Q] (share of 20 draws; expectation when rng is None) and the
    tokens. B's edge on a question is the same for every model: a question where B helps one
    model helps the others, as a benchmark's questions do across model sizes."""
    beta = np.linspace(0, 1, 11)[:, None]
    tok = base[None, :] * np.exp(3 * beta)
    out = []
    for m in _STRENGTH:
        pa = _sigmoid(z[None, :] + m + 3 * beta - 1)
        pb = _sigmoid(z[None, :] + m + 3 * beta - 1 + u[None, :])
        if rng is None:
            out.append((pa * 100, pb * 100, tok))
        else:
            out.append((rng.binomial(20, pa) / 20 * 100, rng.binomial(20, pb) / 20 * 100, tok))
    return out


def _shared_questions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    return (rng.normal(0.0, 1.5, n), rng.normal(0.3, 1.0, n),
            np.exp(rng.normal(math.log(4e4), 0.5, n)))


def test_pooled_stores_with_the_same_questions_are_resampled_together() -> None:
    """ΔAUC pooled over four models' replays of one benchmark (the search split of
    env/aime-qwen3.toml): the stores hold the same 30 questions, so the pooled figure rests on one
    sample of 30 questions, not four. Resampled per store (as if independent) the 95% interval held
    the truth about 77% of the time in this simulation; resampled together (clusters) at the
    nominal rate."""
    pop = _shared_stores(*_shared_questions(np.random.default_rng(99), 200_000), None)
    truth = float(np.mean([metrics.auc_log_tokens_batch(t.mean(1), b.mean(1), *TR)[0]
                           - metrics.auc_log_tokens_batch(t.mean(1), a.mean(1), *TR)[0]
                           for a, b, t in pop]))
    rng = np.random.default_rng(12)
    reps = 150
    hits = {"apart": 0, "together": 0}
    for rep in range(reps):
        sim = _shared_stores(*_shared_questions(rng, 30), rng)
        a = [curve(f"m{k}/bench{rep}", "A", x[0], x[2]) for k, x in enumerate(sim)]
        b = [curve(f"m{k}/bench{rep}", "B", x[1], x[2]) for k, x in enumerate(sim)]
        names = [c.store for c in a]
        together = stats.clusters_by_name(names)
        assert len(set(together.values())) == 1
        hits["apart"] += stats.compare(b, a, TR, resamples=400).pooled.contains(truth)
        hits["together"] += stats.compare(b, a, TR, resamples=400,
                                          clusters=together).pooled.contains(truth)
    assert hits["together"] / reps >= 0.9, hits
    assert hits["apart"] / reps <= 0.85, hits  # the defect the clusters fix


def test_question_clusters() -> None:
    """Stores with the same questions share a key whatever their names; a store alone keeps its
    own name (its resamples, and so its intervals, as before); by name, MODEL/BENCH stores of one
    benchmark share one."""
    p = SynthParams(questions=6, branches=4, seed=3, model="m1", benchmark="b")
    one = generate(p)
    other_model = generate(SynthParams(questions=6, branches=4, seed=3, model="m2",
                                       benchmark="b", skill=-3.0))
    other_questions = generate(SynthParams(questions=6, branches=4, seed=4, model="m1",
                                           benchmark="c"))
    keys = stats.question_clusters([one, other_model, other_questions])
    assert keys[one.name] == keys[other_model.name] != one.name
    assert keys[other_questions.name] == other_questions.name
    assert stats.question_clusters([one, other_questions]) == {one.name: one.name,
                                                              other_questions.name:
                                                              other_questions.name}
    assert stats.clusters_by_name(["B/x", "A/x", "A/y", "plain"]) == {
        "A/x": "A/x + B/x", "B/x": "A/x + B/x", "A/y": "A/y", "plain": "plain"}
    # the same grouping from content and from names gives the same keys (the same resamples)
    assert stats.clusters_by_name([one.name, other_model.name, other_questions.name]) == keys
    # by name, a store of a subset of the benchmark's questions is not grouped (compare passes
    # the question counts): results on it still compare, resampled on their own
    assert stats.clusters_by_name(["B/x", "A/x", "C/x"], {"A/x": 30, "B/x": 30, "C/x": 15}) == {
        "A/x": "A/x + B/x", "B/x": "A/x + B/x", "C/x": "C/x"}
    # one key, different numbers of questions: refused, not silently mispaired
    rng = np.random.default_rng(8)
    acc, tok = population(rng, 30)
    acc2, tok2 = population(rng, 20)
    with pytest.raises(ConfigError, match="same questions"):
        stats.compare([curve("A/x", "A", acc, tok), curve("B/x", "A", acc2, tok2)],
                      [curve("A/x", "B", acc, tok), curve("B/x", "B", acc2, tok2)], TR,
                      clusters={"A/x": "k", "B/x": "k"})
    # a store alone in its cluster: the same interval as without clusters, bit for bit
    a, b = curve("A/x", "A", acc, tok), curve("A/x", "B", acc, tok * 1.2)
    assert stats.compare([a], [b], TR, resamples=300) == stats.compare(
        [a], [b], TR, resamples=300, clusters={"A/x": "A/x"})


def test_one_question_gives_no_interval() -> None:
    """One question: every resample is that question, so the bootstrap's interval would have zero
    width and any difference would pass for significant. No interval instead, per store and for a
    figure pooled over that store; the other stores keep theirs."""
    from autotts.discover.significance import _iv, describe

    rng = np.random.default_rng(9)
    acc, tok = population(rng, 1)
    a1, b1 = curve("one", "A", acc, tok), curve("one", "B", acc * 0.5, tok)
    acc30, tok30 = population(rng, 30)
    a30, b30 = curve("many", "A", acc30, tok30), curve("many", "B", acc30 * 0.5, tok30)
    cmp = stats.compare([a1, a30], [b1, b30], TR, resamples=300)
    one, pooled, many = cmp.stores["one"], cmp.pooled, cmp.stores["many"]
    for d in (one, pooled):
        assert d.estimate > 0 and not d.defined and not d.significant
        assert d.verdict() == "no interval" and stats.NO_INTERVAL in d.describe()
        assert d.as_dict()["low"] is None and d.as_dict()["prob_improvement"] is None
    assert many.defined and many.significant
    assert not cmp.auc_a["one"].defined and not cmp.pooled_a.defined and cmp.auc_a["many"].defined
    assert not stats.pooled_auc_interval([a1, a30], TR, resamples=300).defined
    assert all(not d.defined for _, d in stats.delta_accuracy_at_tokens(a1, b1, resamples=300))
    iv = stats.beta_intervals(a1, resamples=300)[0]
    assert not iv["accuracy"].defined and not iv["tokens"].defined
    text = describe(_iv(one))
    assert "no interval" in text and "significant" not in text


@pytest.mark.parametrize("method", ["bca", "percentile"])
def test_p_values_match_the_intervals(method: str) -> None:
    """The p-value says what the interval says: below 0.05 exactly where the 95% interval
    excludes 0 (skewed and shifted bootstrap distributions, strong acceleration)."""
    rng = np.random.default_rng(10)
    seen = set()
    for _ in range(300):
        boot = rng.gamma(2.0, 1.0, size=1000) * rng.choice([-1, 1]) + rng.normal(0, 2)
        est = float(np.median(boot) + rng.normal(0, 0.3))
        jack = rng.normal(0, 1, size=30) ** 3
        lo, hi = stats._interval(est, boot, jack, 0.95, method)
        p = stats._p_value(est, boot, jack, method)
        assert (lo > 0 or hi < 0) == (p < 0.05), (lo, hi, p)
        seen.add(p < 0.05)
    assert seen == {True, False}
    flat = np.zeros(100)
    assert stats._p_value(0.0, flat, None, method) == 1.0  # identical controllers
    assert stats._p_value(2.0, flat + 2.0, None, method) == 0.0


def test_holm() -> None:
    nan = math.nan
    got = stats.holm([0.01, 0.04, nan, 0.03, 0.5])
    assert got[2] != got[2]  # no interval: out of the family
    assert got[:2] + got[3:] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert stats.holm([0.6, 0.3]) == pytest.approx([0.6, 0.6])  # step-down keeps order
    assert stats.holm([]) == []


def test_comparison_rows() -> None:
    rng = np.random.default_rng(6)
    a, b = [], []
    for k in range(2):
        acc, tok = population(rng, 30)
        a.append(curve(f"s{k}", "A", acc, tok))
        b.append(curve(f"s{k}", "B", acc.copy(), tok.copy()))
    cmp = stats.compare(a, b, TR, resamples=200)
    rows = stats.comparison_rows(cmp, "search")
    assert [r["store"] for r in rows] == ["s0", "s1", "pooled"]
    assert all(r["verdict"] == "within noise" and r["delta"] == 0 for r in rows)
    assert rows[-1]["auc_a"] == pytest.approx(cmp.pooled_a.estimate)


@pytest.mark.parametrize("method", ["bca", "percentile"])
def test_batched_intervals_equal_the_scalar_ones(method: str) -> None:
    rng = np.random.default_rng(7)
    boot = rng.gamma(2.0, 1.0, size=(500, 6))
    boot[:, 5] = 3.0  # a constant column
    est = boot.mean(axis=0) + rng.normal(0, 0.1, size=6)
    est[5] = 3.0
    jack = rng.normal(0, 1, size=(30, 6)) ** 3
    lo, hi = stats._intervals(est, boot, jack, 0.95, method)
    for i in range(6):
        want = stats._interval(float(est[i]), boot[:, i], jack[:, i], 0.95, method)
        assert (lo[i], hi[i]) == pytest.approx(want, rel=1e-12, abs=1e-12)


# ---- coverage on the published replays ---------------------------------------------------------


@pytest.mark.reference
def test_pooled_coverage_on_the_published_replays() -> None:
    """The published Qwen3 replays as a population: per model its 60 AIME 2024 and 2025 questions
    (SC's and Parallel-Probe's per-question curves, 20 draws each). A replication draws 30 of them
    with replacement, the same 30 for all four models (one benchmark), and compares SC with
    Parallel-Probe pooled over the models; the truth is the pooled ΔAUC on all 60. Resampled per
    store the 95% interval held it 85.5% of the time; resampled together (what compare does with
    stores that share their questions) 91.5%. (CMC against SC and Parallel-Probe, 500
    replications of 2000 resamples: 87.6% and 87.2% apart, 92.4% and 94.6% together;
    docs/comparisons.md.)"""
    from conftest import MODELS, reference_file

    from autotts.store import open_store

    stores = [open_store(reference_file(f"{m}/{b}.json")) for m in MODELS
              for b in ("aime24", "aime25")]
    keys = stats.question_clusters(stores)
    assert keys["Qwen3-0.6B/aime24"] == keys["Qwen3-8B/aime24"] != keys["Qwen3-8B/aime25"]
    pop = {}
    for name in ("sc", "parallel_probe"):
        ev = evaluate(name, stores, BETAS, EvalProtocol(draws=20))
        cv = stats.curves_from_outcomes(ev.outcomes)
        pop[name] = {m: (np.concatenate([cv[(f"{m}/{b}", name)].accuracy for b in BENCHES], 1),
                         np.concatenate([cv[(f"{m}/{b}", name)].tokens for b in BENCHES], 1))
                     for m in MODELS}
    truth = float(np.mean([stats.auc(curve("t", "a", *pop["sc"][m]), TR)
                           - stats.auc(curve("t", "b", *pop["parallel_probe"][m]), TR)
                           for m in MODELS]))
    rng = np.random.default_rng(5)
    reps = 200
    hits = {"apart": 0, "together": 0}
    for r in range(reps):
        idx = rng.integers(0, 60, 30)
        a = [curve(f"{m}/r{r}", "sc", pop["sc"][m][0][:, idx], pop["sc"][m][1][:, idx])
             for m in MODELS]
        b = [curve(f"{m}/r{r}", "pp", pop["parallel_probe"][m][0][:, idx],
                   pop["parallel_probe"][m][1][:, idx]) for m in MODELS]
        together = {c.store: f"r{r}" for c in a}
        hits["apart"] += stats.compare(a, b, TR, resamples=500).pooled.contains(truth)
        hits["together"] += stats.compare(a, b, TR, resamples=500,
                                          clusters=together).pooled.contains(truth)
    assert hits["together"] / reps >= 0.9, hits
    assert hits["apart"] / reps <= 0.87, hits
