"""`autotts/WidthDepth-v0` follows Gymnasium's conventions and drives the same engine."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import autotts.gym_env  # noqa: F401  (registers autotts/WidthDepth-v0)
from autotts.gym_env import ANSWER, BRANCH, READ_NEW, WidthDepthEnv
from tests.conftest import branch, make_store


@pytest.fixture(scope="module")
def store():
    return make_store(
        [
            ("A", [branch(["x", "A"], 25, "A"), branch(["B", "B"], 30, "B"), branch(["A"], 8, "A")]),
            ("B", [branch(["B"], 12, "B"), branch(["C", "C", "C"], 40, "C"), branch([], 3, "B")]),
        ]
    )


def test_check_env_passes(store):
    env = WidthDepthEnv(store, branch_cap=3)
    check_env(env, skip_render_check=False)


def test_registered_and_makeable(store):
    env = gym.make("autotts/WidthDepth-v0", store=store, branch_cap=2)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert info["action_mask"][ANSWER]


def test_seeded_reset_is_reproducible(store):
    a, b = WidthDepthEnv(store), WidthDepthEnv(store)
    picks_a = [(i["question"], i["draw"]) for i in (a.reset(seed=s)[1] for s in range(5))]
    picks_b = [(i["question"], i["draw"]) for i in (b.reset(seed=s)[1] for s in range(5))]
    assert picks_a == picks_b
    _, info = a.reset(options={"question": 1, "draw": 7})
    assert (info["question"], info["draw"]) == (1, 7)


def test_rewards_cost_and_correct_answer(store):
    env = WidthDepthEnv(store, branch_cap=3, cost_weight=0.01)
    env.reset(options={"question": 0, "draw": 0})
    order = env._ep._order.tolist()  # this draw's branch order, to know the expected costs
    costs = {0: 10, 1: 10, 2: 10}
    _, r, term, trunc, info = env.step(BRANCH)
    assert not term and not trunc and r == pytest.approx(-0.01 * costs[order[0]])
    _, r, term, _, info = env.step(READ_NEW)
    tokens_read = [25, 30, 8][order[1]]
    assert r == pytest.approx(-0.01 * tokens_read)
    _, r, term, _, info = env.step(ANSWER)
    assert term and r in (0.0, 1.0) and info["correct"] == (r == 1.0)


def test_invalid_action_is_a_noop_with_reason(store):
    env = WidthDepthEnv(store, branch_cap=2, invalid_penalty=0.5)
    obs0, _ = env.reset(seed=0)
    obs, r, term, trunc, info = env.step(3)  # ADVANCE slot 0: nothing opened yet
    assert "invalid_action" in info and r == -0.5 and not term and not trunc
    assert all(np.array_equal(obs[k], obs0[k]) for k in obs)
    assert not info["action_mask"][3]
    env.step(BRANCH)
    env.step(BRANCH)
    _, _, _, _, info = env.step(BRANCH)
    assert "cap" in info["invalid_action"]


def test_answer_terminates_and_masks_match_validity(store):
    env = WidthDepthEnv(store, branch_cap=3)
    rng = np.random.default_rng(0)
    for episode in range(20):
        env.reset(seed=episode)
        for _ in range(50):
            mask = env.action_masks()
            valid = np.flatnonzero(mask)
            a = int(rng.choice(valid))
            _, _, term, trunc, info = env.step(a)
            assert "invalid_action" not in info  # a masked-valid action is always valid
            if term or trunc:
                break


def test_sync_vector_env(store):
    envs = gym.vector.SyncVectorEnv(
        [lambda: WidthDepthEnv(store, branch_cap=3) for _ in range(3)]
    )
    obs, _ = envs.reset(seed=[0, 1, 2])
    assert obs["branches"].shape == (3, 3, 6)
    for _ in range(10):
        obs, rewards, _, _, _ = envs.step(np.array([BRANCH, READ_NEW, ANSWER]))
        assert rewards.shape == (3,)
    envs.close()


def reference_obs(env: WidthDepthEnv) -> dict[str, np.ndarray]:
    """The observation as the module docstring defines it, computed the slow, obvious way."""
    ep, cap = env._ep, env.branch_cap
    k = min(ep.num_opened, cap)
    latest, pruned = ep.latest[:k], ep.pruned[:k]
    alive = [int(a) for a, p in zip(latest, pruned, strict=True) if not p and a >= 0]
    votes = {a: alive.count(a) for a in alive}
    leader = max(votes, key=lambda a: (votes[a], -alive.index(a))) if votes else -1
    branches = np.zeros((cap, 6), dtype=np.float32)
    for i in range(k):
        a, fin = int(latest[i]), bool(ep.finished[i])
        branches[i] = [1.0, not (fin or pruned[i]), fin, min(ep.depths[i] / env.max_depth, 1.0),
                       a >= 0 and a == leader, votes.get(a, 0) / len(alive) if alive else 0.0]
    glob = np.array([k / cap, min(ep.tokens / env.token_scale, 1.0),
                     votes[leader] / len(alive) if alive else 0.0,
                     (ep.pool_size - ep.num_opened) / ep.pool_size, min(len(votes) / cap, 1.0)],
                    dtype=np.float32)
    return {"branches": branches, "globals": glob}


def test_observation_features_match_their_definition():
    from autotts.synth import SynthParams, generate

    store = generate(SynthParams(questions=6, branches=24, seed=5))
    env = WidthDepthEnv(store, branch_cap=10, max_depth=8)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    checked = 0
    for step in range(3000):
        ref = reference_obs(env)
        np.testing.assert_allclose(obs["branches"], ref["branches"], rtol=1e-6)
        np.testing.assert_allclose(obs["globals"], ref["globals"], rtol=1e-6)
        checked += int(obs["branches"][:, 5].any() and (obs["branches"][:, 1] == 0).any())
        mask = env.action_masks()
        mask[ANSWER] = step % 40 == 39
        choices = np.flatnonzero(mask)
        obs, _, term, trunc, _ = env.step(int(rng.choice(choices)) if len(choices) else ANSWER)
        if term or trunc:
            obs, _ = env.reset()
    assert checked > 100  # states with votes and stopped (pruned or finished) branches were seen


def test_budget_spent_leaves_only_answer(store):
    env = WidthDepthEnv(store, branch_cap=3, budget=15)
    check_env(env, skip_render_check=True)
    env.reset(options={"question": 1, "draw": 0})
    _, _, _, _, info = env.step(READ_NEW)  # admitted at 0 < 15, charged in full
    spent = info["tokens"]
    if spent < 15:
        _, _, _, _, info = env.step(READ_NEW)
        spent = info["tokens"]
    assert spent >= 15
    assert info["action_mask"].tolist() == [True] + [False] * (len(info["action_mask"]) - 1)
    _, _, term, _, info = env.step(BRANCH)
    assert not term and "budget is spent" in info["invalid_action"]
    assert str(spent) in info["invalid_action"]  # the cost so far, a revealed figure
    _, _, term, _, _ = env.step(ANSWER)
    assert term
