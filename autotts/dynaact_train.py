"""Offline training of the DynaAct controller's utility (issue 7): fitted Q-iteration on replayed
transitions of the *search* split, numpy only, deterministic given a seed, no LLM calls.

The MDP is the controller's own round loop (controllers/dynaact.py). A state s is what the
controller has revealed; an action is a *set* S of candidate actions (advance branch i, open a new
branch); the reward is the correctness of the answer the controller returns when it stops, minus
`token_cost` per token spent. DynaAct's set function approximates the set's value additively,

    Q(s, S) = V(s) + Σ_{a∈S} u(s, a),       u(s, a) = (1, e_a) · W · s

where V(s) is the probability that the current answer is right (what stopping now earns; a
logistic regression on the state features, fitted to replayed outcomes) and u is the utility the
controller's greedy step uses (a linear function of the action embedding e_a crossed with the state
features s). Fitted Q-iteration regresses, for every replayed transition (s, S, tokens, s'),

    Σ_{a∈S} u(s, a)  ≈  −c·tokens + γ·min(1, max(V(s'), V(s') + Σ_{a∈S'} u(s', a))) − V(s)

where S' is the set replayed at s' (none where the behaviour stopped): the max is the stop /
continue decision, and a value is a probability, hence min(1, ·). Maximizing over *all* sets at s'
instead (the sum of the largest positive utilities) over-estimates with an additive utility and
converges to "every state is worth 1"; see docs/dynaact.md. Transitions come from the controller
itself, run with randomized knobs and noisy utilities (collection 1: untrained, then with the
utility fitted so far), so the data cover the states and sets it visits.

Held-out data are out of reach by construction: `train` takes an environment definition and opens
only `env.split_paths("search")`. Gold classes are read here, in trusted code, to label outcomes;
the controller never sees them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotts import controller as ctl
from autotts.engine import Episode, Question, store_class
from autotts.envdef import EnvDef
from autotts.errors import ConfigError
from autotts.fsio import atomic_write_bytes
from autotts.store import open_store

FORMAT = "autotts-dynaact-utility"
FORMAT_VERSION = 1
BEGIN_MARK = "# ---- BEGIN TRAINED UTILITY"
END_MARK = "# ---- END TRAINED UTILITY ----"
SIGNIFICANT = 8  # digits kept in the file and in the controller (so the two are identical)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    draws: int = 12  # episodes per question and collection
    collections: int = 2  # 1: untrained behaviour; each further one uses the utility so far
    iterations: int = 40  # fitted-Q sweeps per fit (stops early once the weights settle)
    token_cost: float = 2e-7  # c: reward = correct − c·tokens
    gamma: float = 1.0
    ridge: float = 1e-2
    noise: float = 0.01  # std of the exploration noise added to the behaviour's utilities

    def check(self) -> None:
        if self.draws < 1 or self.collections < 1 or self.iterations < 1:
            raise ConfigError("draws, collections and iterations must be >= 1")
        if not (0.0 < self.gamma <= 1.0) or self.token_cost < 0 or self.ridge <= 0:
            raise ConfigError("need 0 < gamma <= 1, token_cost >= 0 and ridge > 0")


@dataclass
class Utility:
    """A trained utility: the controller's weights plus what produced them."""

    weights: list[float]
    value_weights: list[float] = field(default_factory=list)
    stores: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        data = json.dumps([float(w) for w in self.weights]).encode()
        return hashlib.sha256(data).hexdigest()[:12]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "fingerprint": self.fingerprint(),
                **asdict(self)}


# ---- the controller module (one source of truth for features, greedy step and round loop) ----


def controller_module(name_or_path: str = "dynaact") -> Any:
    import sys

    spec = ctl.load(name_or_path)
    return sys.modules[spec.cls.__module__]


# ---- utility files ----------------------------------------------------------------------------


def _round(x: float) -> float:
    return float(f"{float(x):.{SIGNIFICANT}g}")


def save_utility(utility: Utility, path: str | Path) -> Path:
    path = Path(path)
    text = json.dumps(utility.to_json(), indent=1) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def load_utility(path: str | Path, num_weights: int | None = None) -> Utility:
    """Read a utility file; any problem is a ConfigError naming the file, on one line."""
    path = Path(path)
    if num_weights is None:
        num_weights = int(controller_module().NUM_WEIGHTS)
    if not path.is_file():
        raise ConfigError(f"{path}: no such DynaAct utility file (train one with "
                          "`autotts train-dynaact --env ENV --out FILE`)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a DynaAct utility file (invalid JSON: {e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a DynaAct utility file (no \"format\": \"{FORMAT}\")")
    if raw.get("version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: DynaAct utility format version {raw.get('version')!r} is not "
                          f"supported (expected {FORMAT_VERSION})")
    w = raw.get("weights")
    if (not isinstance(w, list) or len(w) != num_weights
            or not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                       for x in w)):
        raise ConfigError(f"{path}: corrupt DynaAct utility file (\"weights\" must be "
                          f"{num_weights} finite numbers)")
    return Utility(
        weights=[float(x) for x in w],
        value_weights=[float(x) for x in raw.get("value_weights") or []],
        stores=[str(s) for s in raw.get("stores") or []],
        config=dict(raw.get("config") or {}),
        metrics=dict(raw.get("metrics") or {}),
    )


def embed_in_controller(utility: Utility, controller: str | Path, source: str = "") -> Path:
    """Rewrite the block between the controller's TRAINED UTILITY markers with these weights (the
    controller cannot read files at run time: it runs in the sandbox)."""
    path = Path(controller)
    text = path.read_text(encoding="utf-8")
    begin = text.find(BEGIN_MARK)
    end = text.find(END_MARK)
    if begin < 0 or end < begin:
        raise ConfigError(f"{path}: no TRAINED UTILITY block to rewrite (markers missing)")
    end += len(END_MARK)
    stores = ", ".join(utility.stores) or "?"
    info = (f"fitted Q-iteration on {stores}; seed {utility.config.get('seed', '?')}; "
            f"fingerprint {utility.fingerprint()}" + (f"; file {source}" if source else ""))
    nums = [repr(_round(w)) for w in utility.weights]
    lines = [", ".join(nums[i : i + 6]) + "," for i in range(0, len(nums), 6)]
    block = "\n".join([
        f"{BEGIN_MARK} (generated by `autotts train-dynaact`; do not edit by hand) ----",
        f"UTILITY_INFO = {info!r}",
        "TRAINED_UTILITY = (",
        *(f"    {ln}" for ln in lines),
        ")",
        END_MARK,
    ])
    atomic_write_bytes(path, (text[:begin] + block + text[end:]).encode("utf-8"))
    return path  # the controller cache is keyed by source: the next load sees the new weights


def embedded_utility(controller: str | Path) -> list[float]:
    """The weights embedded in a controller file, read from its source (not imported)."""
    import ast

    tree = ast.parse(Path(controller).read_text(encoding="utf-8"))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "TRAINED_UTILITY"):
            try:
                return [float(x) for x in ast.literal_eval(node.value)]
            except ValueError:
                break
    raise ConfigError(f"{controller}: no literal TRAINED_UTILITY tuple")


# ---- collecting transitions -------------------------------------------------------------------


@dataclass
class Batch:
    """Replayed rounds of many episodes, flattened. State j: features states[j], label correct[j]
    (the answer at j is right); transition t from state src[t] to dst[t] chose the candidates
    whose embedding rows sum (with a leading 1 each) to chosen[t] and spent tokens[t]."""

    states: np.ndarray
    correct: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    chosen: np.ndarray
    tokens: np.ndarray
    episodes: int = 0
    episode_reward: float = 0.0

    @staticmethod
    def concat(parts: Sequence[Batch]) -> Batch:
        offs = np.cumsum([0] + [len(p.states) for p in parts])
        return Batch(
            states=np.concatenate([p.states for p in parts]),
            correct=np.concatenate([p.correct for p in parts]),
            src=np.concatenate([p.src + o for p, o in zip(parts, offs, strict=False)]),
            dst=np.concatenate([p.dst + o for p, o in zip(parts, offs, strict=False)]),
            chosen=np.concatenate([p.chosen for p in parts]),
            tokens=np.concatenate([p.tokens for p in parts]),
            episodes=sum(p.episodes for p in parts),
        )


def _recording_class(base: type) -> type:
    """The controller with its two hooks filled in: noisy utilities (exploration) and a record of
    every round."""

    class Recording(base):  # type: ignore[misc, valid-type]
        def __init__(self, rng: np.random.Generator, noise: float, **knobs: Any) -> None:
            super().__init__(**knobs)
            self.rng = rng
            self.noise = noise
            self.rounds: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]] = []

        def utilities(self, embeddings: np.ndarray, state: np.ndarray) -> np.ndarray:
            u = super().utilities(embeddings, state)
            if self.noise > 0 and len(u):
                u = u + self.rng.normal(0.0, self.noise, len(u))
            return u

        def record(self, tokens: int, answer: int, state: np.ndarray, embeddings: np.ndarray,
                   chosen: Any) -> None:
            self.rounds.append((int(tokens), int(answer), state.copy(),
                                embeddings.astype(np.float32), np.asarray(chosen, dtype=np.int64)))

    return Recording


def behaviour_knobs(rng: np.random.Generator, trained: bool) -> dict[str, Any]:
    """Randomized knobs of the behaviour policy: wide coverage of set sizes, diversity weights,
    widths and horizons. Untrained behaviour (utility 0 plus noise) never stops on utility."""
    return {
        "k": int(rng.integers(1, 13)),
        "lam": float(rng.uniform(0.4, 1.0)),
        "tau": float(rng.uniform(-0.01, 0.05)) if trained else -1.0,
        "n_init": int(rng.integers(1, 9)),
        "max_branches": int(rng.integers(4, 65)),
        "max_rounds": int(rng.integers(3, 40)),
    }


def collect(
    questions: Sequence[tuple[Question, int]],
    base: type,
    weights: np.ndarray,
    cfg: TrainConfig,
    rng: np.random.Generator,
    trained: bool,
    progress: Callable[[int, int], None] | None = None,
) -> Batch:
    """Run the behaviour policy cfg.draws times on every (question, gold class)."""
    rec_cls = _recording_class(base)
    states, correct, src, dst, chosen, tokens = ([] for _ in range(6))
    n_states = 0
    total = len(questions) * cfg.draws
    rewards = []
    done = 0
    for question, gold in questions:
        for _ in range(cfg.draws):
            order = rng.permutation(question.num_branches)
            ep = Episode(question, order)
            # Untrained behaviour explores harder: its utility is pure noise around 0.
            ctrl = rec_cls(rng, cfg.noise if trained else 2 * cfg.noise, utility=weights,
                           **behaviour_knobs(rng, trained))
            answer = ctrl.run(ep)
            # Answers are the episode's own ids: map them to the store's class to score.
            rewards.append(float(store_class(ep, answer) == gold) - cfg.token_cost * ep.tokens)
            rounds = ctrl.rounds
            for t, (tok, ans, state, emb, pick) in enumerate(rounds):
                j = n_states + t
                states.append(state)
                correct.append(ans >= 0 and store_class(ep, ans) == gold)
                if len(pick) and t + 1 < len(rounds):
                    src.append(j)
                    dst.append(j + 1)
                    aug = np.concatenate([np.ones((len(pick), 1)), emb[pick]], axis=1)
                    chosen.append(aug.sum(axis=0))
                    tokens.append(rounds[t + 1][0] - tok)
            n_states += len(rounds)
            done += 1
            if progress:
                progress(done, total)
    return Batch(
        states=np.array(states),
        correct=np.array(correct, dtype=np.float64),
        src=np.array(src, dtype=np.int64),
        dst=np.array(dst, dtype=np.int64),
        chosen=np.array(chosen),
        tokens=np.array(tokens, dtype=np.float64),
        episodes=done,
        episode_reward=float(np.mean(rewards)) if rewards else 0.0,
    )


# ---- fitting ----------------------------------------------------------------------------------


def value_features(states: np.ndarray) -> np.ndarray:
    """V's inputs: the state features (bias first) and their pairwise products."""
    s = states[:, 1:]
    iu = np.triu_indices(s.shape[1])
    quad = (s[:, :, None] * s[:, None, :])[:, iu[0], iu[1]]
    return np.concatenate([states, quad], axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float, iters: int = 50) -> np.ndarray:
    """L2-regularized logistic regression by Newton's method (IRLS); deterministic."""
    w = np.zeros(x.shape[1])
    reg = ridge * len(y) * np.eye(x.shape[1])
    reg[0, 0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) + reg @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + reg + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def predict_value(vw: np.ndarray, states: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(value_features(states) @ vw, -30, 30)))


def chosen_features(batch: Batch) -> np.ndarray:
    """Σ_{a∈S} (1, e_a) ⊗ s: the design row of each transition."""
    s = batch.states[batch.src]
    return (batch.chosen[:, :, None] * s[:, None, :]).reshape(len(s), -1)


def fitted_q(
    batch: Batch,
    value: np.ndarray,
    cfg: TrainConfig,
    log: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fitted Q-iteration for the additive set utility; returns (weights, diagnostics).

    Target of transition t (s -> s'): −c·tokens + γ·max(V(s'), V(s') + Σ_{a∈S'} u(s', a)), where
    S' is the set replayed at s' (none if the behaviour stopped there): the max is the stop /
    continue decision."""
    x = chosen_features(batch)
    d = x.shape[1]
    gram = x.T @ x + cfg.ridge * len(x) * np.eye(d) / d
    chol = np.linalg.cholesky(gram)
    # The transition leaving each state, if any (states are consecutive within an episode).
    nxt = np.full(len(batch.states), -1, dtype=np.int64)
    nxt[batch.src] = np.arange(len(batch.src))
    after = nxt[batch.dst]
    has_next = after >= 0
    w = np.zeros(d)
    base = -cfg.token_cost * batch.tokens - value[batch.src]
    change = math.inf
    sweeps = 0
    for _ in range(cfg.iterations):
        sweeps += 1
        cont = np.zeros(len(x))
        cont[has_next] = np.maximum(x[after[has_next]] @ w, 0.0)
        # A state's value is a probability of being right: never above 1.
        y = base + cfg.gamma * np.minimum(1.0, value[batch.dst] + cont)
        new = np.linalg.solve(chol.T, np.linalg.solve(chol, x.T @ y))
        change = float(np.abs(new - w).max())
        w = new
        if change < 1e-7:
            break
    resid = float(np.sqrt(np.mean((x @ w - y) ** 2)))
    if log:
        log(f"  fitted-Q: {sweeps} sweeps, last max |Δw| {change:.1e}, residual {resid:.4f}")
    return w, {"sweeps": sweeps, "last_change": change, "transitions": len(x),
               "bellman_residual": resid}


# ---- the training entry point -----------------------------------------------------------------


def load_search_questions(env: EnvDef) -> tuple[list[tuple[Question, int]], list[str]]:
    """(Question, gold class) for every question of the *search* split, and the store names."""
    questions: list[tuple[Question, int]] = []
    names = []
    for path in env.split_paths("search"):
        store = open_store(path)
        data, gold = store.replay(), store.gold_classes()
        names.append(store.name)
        questions.extend((Question(data, q), int(gold[q])) for q in range(data.num_questions))
    return questions, names


def train(
    env: EnvDef,
    cfg: TrainConfig | None = None,
    *,
    controller: str = "dynaact",
    log: Callable[[str], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Utility:
    """Learn the utility on env's search split (the only split this function opens)."""
    cfg = cfg or TrainConfig()
    cfg.check()
    module = controller_module(controller)
    base = ctl.load(controller).cls
    say = log or (lambda _m: None)
    t0 = time.perf_counter()
    questions, names = load_search_questions(env)
    say(f"search split: {len(names)} stores, {len(questions)} questions ({', '.join(names)})")
    rng = np.random.default_rng(cfg.seed)
    weights = np.zeros(int(module.NUM_WEIGHTS))
    parts: list[Batch] = []
    metrics: dict[str, Any] = {"collections": []}
    vw = np.zeros(0)
    for c in range(cfg.collections):
        trained = c > 0
        label = f"collection {c + 1}/{cfg.collections}"

        def tick(done: int, total: int, label: str = label) -> None:
            if progress:
                progress(label, done, total)

        part = collect(questions, base, weights, cfg, rng, trained, tick)
        parts.append(part)
        say(f"{label}: {part.episodes} episodes, {len(part.states)} states, {len(part.src)} "
            f"transitions; behaviour reward (accuracy − c·tokens) {part.episode_reward:.4f}")
        batch = Batch.concat(parts)
        vw = fit_logistic(value_features(batch.states), batch.correct, cfg.ridge * 1e-2)
        value = predict_value(vw, batch.states)
        brier = float(np.mean((value - batch.correct) ** 2))
        say(f"  V = P(current answer is right) fitted on {len(batch.states)} states, Brier {brier:.4f}")
        weights, diag = fitted_q(batch, value, cfg, log=say)
        metrics["collections"].append({"episodes": part.episodes, "states": len(part.states),
                                       "behaviour_reward": round(part.episode_reward, 6),
                                       "value_brier": round(brier, 6), **diag})
    say(f"trained in {time.perf_counter() - t0:.1f} s")
    return Utility(
        weights=[_round(w) for w in weights],
        value_weights=[_round(w) for w in vw],
        stores=names,
        config={**asdict(cfg), "controller": base.NAME, "env": env.name},
        metrics=metrics,
    )
