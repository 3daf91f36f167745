"""`autotts/WidthDepth-v0`: the width–depth replay as a Gymnasium environment.

One episode replays one question under one draw, on the same `Episode` engine the evaluator uses.

Actions, Discrete(3 + 2·branch_cap):
    0              ANSWER: stop with the plurality of the unpruned branches' latest answers
                   (ties go to the answer seen first; no revealed answer counts as wrong)
    1              BRANCH: open the next branch of the draw and probe its first interval
    2              READ_NEW: open the next branch and read it whole (only its final is revealed)
    3 + i          ADVANCE branch slot i (one more interval, then probe)
    3 + cap + i    PRUNE branch slot i
Branch slots are the opened branches in opening order; at most branch_cap are opened.

Observation, a Dict of float32 boxes, every entry in [0, 1]:
    "branches" (cap, 6): opened, running, finished, depth / max_depth (clipped), agrees with the
                         current leader, vote share of its latest answer among unpruned branches
    "globals"  (5,):     opened / cap, tokens / token_scale (clipped), leader's vote share,
                         share of the pool still unopened, distinct latest answers / cap

Reward: −cost_weight · tokens spent by the step; at ANSWER, +1 if the answer is right.

Invalid actions (advancing a finished, pruned or unopened slot, a branch past the cap or the
pool, any action but ANSWER once the budget is spent) do not change the state: the step returns
reward −invalid_penalty and info["invalid_action"] with the reason. info["action_mask"] (and
`action_masks()`, the convention of maskable policies) marks the valid actions, so agents can avoid
them altogether. An episode that reaches max_steps actions is truncated with no answer.

The engine's rules hold unchanged (docs/semantics.md): with a budget, an action is admitted while
the tokens spent so far are below it and is charged in full; then only ANSWER remains. Answers are
the episode's own ids, numbered as revealed; ANSWER is scored by mapping the plurality's id back to
the store's class. Nothing in the observation, reward or info depends on what was not revealed
(tests/test_leaks.py).

reset(seed=..., options={"question": q, "draw": d}) picks the question and the draw (both drawn
from the env's RNG when not given).
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from autotts.draws import draw_order
from autotts.engine import NO_ANSWER, Episode, InvalidAction, Question, store_class
from autotts.errors import ConfigError
from autotts.store import Store, open_store

ANSWER, BRANCH, READ_NEW = 0, 1, 2
BRANCH_FEATURES = 6
GLOBAL_FEATURES = 5


def plurality(latest: np.ndarray | list[int]) -> tuple[int, float]:
    """(answer, vote share) of the most frequent revealed answer; ties go to the first seen."""
    return _lead(_votes(latest.tolist() if isinstance(latest, np.ndarray) else latest))


def _lead(counts: dict[int, int]) -> tuple[int, float]:
    if not counts:
        return NO_ANSWER, 0.0
    leader = max(counts, key=counts.__getitem__)  # the first of the tied: dicts keep order
    return leader, counts[leader] / sum(counts.values())


def _votes(answers: list[int]) -> dict[int, int]:
    """Revealed answers (>= 0) and their counts, in order of first appearance. Plain Python:
    a step sees a handful of branches, where numpy's per-call overhead dominates."""
    counts: dict[int, int] = {}
    for a in answers:
        if a >= 0:
            counts[a] = counts.get(a, 0) + 1
    return counts


class WidthDepthEnv(gym.Env[dict[str, np.ndarray], int]):
    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        store: str | os.PathLike[str] | Store,
        *,
        branch_cap: int = 16,
        cost_weight: float = 1e-5,
        invalid_penalty: float = 0.0,
        probe_cost: int = 0,
        budget: int | None = None,
        protocol: str = "shuffle",
        draws: int = 100,
        max_steps: int | None = None,
        max_depth: int = 64,
        token_scale: float = 1e6,
        render_mode: str | None = None,
    ) -> None:
        if branch_cap < 1:
            raise ConfigError(f"branch_cap must be >= 1, got {branch_cap}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self._store = store if isinstance(store, Store) else open_store(store)
        data = self._store.replay()
        self._questions = [Question(data, q) for q in range(data.num_questions)]
        self._gold = self._store.gold_classes()  # the env scores; the engine never sees gold
        self.branch_cap = int(branch_cap)
        self.cost_weight = float(cost_weight)
        self.invalid_penalty = float(invalid_penalty)
        self.probe_cost = int(probe_cost)
        self.budget = budget
        self.protocol = protocol
        self.draws = int(draws)
        self.max_depth = int(max_depth)
        self.token_scale = float(token_scale)
        self.max_steps = int(max_steps) if max_steps else 4 * self.branch_cap * (self.max_depth + 2)
        self.render_mode = render_mode
        cap = self.branch_cap
        self._n_actions = 3 + 2 * cap
        self.action_space = spaces.Discrete(self._n_actions)
        self.observation_space = spaces.Dict(
            {
                "branches": spaces.Box(0.0, 1.0, shape=(cap, BRANCH_FEATURES), dtype=np.float32),
                "globals": spaces.Box(0.0, 1.0, shape=(GLOBAL_FEATURES,), dtype=np.float32),
            }
        )
        self._ep: Episode | None = None
        self._q = 0
        self._draw = 0
        self._steps = 0

    # ---- Gymnasium API ------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        nq = len(self._questions)
        q = options.get("question")
        d = options.get("draw")
        self._q = int(self.np_random.integers(nq)) if q is None else int(q)
        self._draw = int(self.np_random.integers(self.draws)) if d is None else int(d)
        if not 0 <= self._q < nq:
            raise ConfigError(f"question {self._q} out of range (the store has {nq})")
        question = self._questions[self._q]
        order = draw_order(self.protocol, self._draw, self._q, question.num_branches)
        self._ep = Episode(question, order, probe_cost=self.probe_cost, budget=self.budget)
        self._steps = 0
        return self._obs(), self._info()

    def step(
        self, action: int
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        ep = self._require_episode()
        a = int(action)
        if not 0 <= a < self._n_actions:
            raise ConfigError(f"action {action!r} is outside {self.action_space}")
        self._steps += 1
        before = ep.tokens
        info: dict[str, Any] = {}
        reward = 0.0
        terminated = False
        try:
            terminated, reward = self._apply(ep, a)
            if terminated:
                info["correct"] = reward > 0
        except InvalidAction as e:
            info["invalid_action"] = str(e)
            reward = -self.invalid_penalty
        reward -= self.cost_weight * (ep.tokens - before)
        truncated = not terminated and self._steps >= self.max_steps
        info.update(self._info())
        return self._obs(), float(reward), terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        ep = self._require_episode()
        cap = self.branch_cap
        mask = np.zeros(3 + 2 * cap, dtype=bool)
        mask[ANSWER] = True
        if ep.budget is not None and ep.tokens >= ep.budget:
            return mask  # the budget is spent: only ANSWER remains
        can_open = ep.num_opened < min(cap, ep.pool_size)
        mask[BRANCH] = mask[READ_NEW] = can_open
        k = min(ep.num_opened, cap)
        mask[3 : 3 + k] = ep.running[:k]
        mask[3 + cap : 3 + cap + k] = ~ep.pruned[:k]
        return mask

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._ep is None:
            return None
        ep = self._ep
        rows = [f"question {self._q}, draw {self._draw}, tokens {ep.tokens}"]
        for i in range(ep.num_opened):
            state = "pruned" if ep.is_pruned(i) else "done" if ep.is_finished(i) else "live"
            rows.append(f"  [{i}] {state:6} depth {ep.depth(i):3}  answers {ep.history(i).tolist()}")
        return "\n".join(rows)

    # ---- internals ----------------------------------------------------------------------------

    def _require_episode(self) -> Episode:
        if self._ep is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        return self._ep

    def _apply(self, ep: Episode, a: int) -> tuple[bool, float]:
        cap = self.branch_cap
        if a == ANSWER:
            answer, _ = plurality(ep.latest[~ep.pruned])
            # Ids are the episode's own (numbered as revealed); the store's class is what scores.
            right = answer >= 0 and store_class(ep, answer) == self._gold[self._q]
            return True, 1.0 if right else 0.0
        if a in (BRANCH, READ_NEW):
            if ep.num_opened >= cap:
                raise InvalidAction(f"branch cap {cap} reached")
            if a == BRANCH:
                ep.branch(probe=True)
            else:
                ep.read_new()
            return False, 0.0
        i = (a - 3) % cap
        if i >= ep.num_opened:
            raise InvalidAction(f"slot {i} holds no branch")
        if a < 3 + cap:
            ep.advance(i)
        else:
            ep.prune(i)
        return False, 0.0

    def _obs(self) -> dict[str, np.ndarray]:
        ep = self._require_episode()
        cap = self.branch_cap
        k = min(ep.num_opened, cap)
        latest = ep.latest[:k].tolist()
        pruned = ep.pruned[:k].tolist()
        counts = _votes([a for a, p in zip(latest, pruned, strict=True) if not p])
        n_valid = sum(counts.values())
        leader, share = _lead(counts)
        branches = np.zeros((cap, BRANCH_FEATURES), dtype=np.float32)
        if k:
            finished = ep.finished[:k].tolist()
            depths = ep.depths[:k].tolist()
            depth_scale = 1.0 / self.max_depth
            branches[:k] = [
                (1.0, not (f or p), f, min(d * depth_scale, 1.0), a >= 0 and a == leader,
                 counts.get(a, 0) / n_valid if n_valid else 0.0)
                for a, p, f, d in zip(latest, pruned, finished, depths, strict=True)
            ]
        glob = np.array(
            [
                k / cap,
                min(ep.tokens / self.token_scale, 1.0),
                share,
                (ep.pool_size - ep.num_opened) / ep.pool_size,
                min(len(counts) / cap, 1.0),
            ],
            dtype=np.float32,
        )
        return {"branches": branches, "globals": glob}

    def _info(self) -> dict[str, Any]:
        ep = self._require_episode()
        return {
            "question": self._q,
            "draw": self._draw,
            "tokens": ep.tokens,
            "action_mask": self.action_masks(),
        }


def register() -> None:
    if "autotts/WidthDepth-v0" not in gym.registry:
        gym.register(id="autotts/WidthDepth-v0", entry_point="autotts.gym_env:WidthDepthEnv")


register()
