"""CMC, the Confidence Momentum Controller (discovered by AutoTTS, arXiv 2605.08083).

Idea: trust the pool once a *momentum* of confidence has built up, not on a single lucky vote.
Each round the pool confidence 1 − BetaCDF(0.5; v1+1, v2+1) is computed over the finished branches'
answers (v1 >= v2 the top two vote counts) and smoothed by an EMA; its trend is the EMA now minus
the EMA T_ema − 1 rounds ago. After warm_up rounds, unfinished branches whose latest answer matches
the pool leader are "aligned" and advance burst_aligned intervals per round; the others advance one
and are abandoned after abandon_patience deviant rounds in a row (keeping at least two alive). The
controller stops with the leader once the EMA is above conf_thresh, the trend is not falling by
more than delta_slack and min_complete branches have finished; while the EMA is low and flat it
widens the pool by widen_burst branches (up to max_branch). Every knob moves with β in the
direction of more budget.

Details that the published description leaves open follow the fit to the published figures: the
confidence is 0 while nothing has finished; before anything has finished every active branch counts
as aligned; knobs round half up.
"""

import numpy as np
from scipy.special import betainc


def round_half_up(x):
    return int(x + 0.5)


def majority(answers):
    """Most frequent answer class (>= 0) of an int array; ties go to the one seen first."""
    answers = answers[answers >= 0]
    if len(answers) == 0:
        return -1
    counts = np.bincount(answers)
    return int(answers[np.argmax(counts[answers] == counts.max())])


def confidence(answers):
    """1 − BetaCDF(0.5; v1 + 1, v2 + 1) over the answers' top two vote counts; 0 if none."""
    answers = answers[answers >= 0]
    if len(answers) == 0:
        return 0.0
    counts = np.bincount(answers)
    if len(counts) > 1:
        top = np.partition(counts, len(counts) - 2)[-2:]
        v2, v1 = int(top[0]), int(top[1])
    else:
        v1, v2 = int(counts[0]), 0
    return 1.0 - float(betainc(v1 + 1, v2 + 1, 0.5))


class ConfidenceMomentum:
    NAME = "cmc"

    @staticmethod
    def schedule(beta):
        b = min(max(beta, 0.0), 1.0)
        r = round_half_up
        return {
            "n_init": max(2, r(2 + 6 * b)),
            "max_branch": min(64, r(4 + 60 * b)),
            "warm_up": max(2, r(2 + 8 * b)),
            "abandon_patience": max(3, r(3 + 9 * b)),
            "T_ema": max(2, r(2 + 6 * b)),
            "ema_alpha": 0.70 - 0.40 * b,
            "conf_thresh": 0.85 + 0.12 * b,
            "delta_slack": 0.04 - 0.03 * b,
            "burst_aligned": max(1, r(1 + 2 * b)),
            "widen_burst": max(1, r(1 + 3 * b)),
            "trend_thresh": 0.04 - 0.03 * b,
            "min_complete": max(2, r(2 + 3 * b)),
        }

    def __init__(self, n_init=5, max_branch=34, warm_up=6, abandon_patience=8, T_ema=5,
                 ema_alpha=0.5, conf_thresh=0.91, delta_slack=0.025, burst_aligned=2,
                 widen_burst=3, trend_thresh=0.025, min_complete=4):
        self.n_init = int(n_init)
        self.max_branch = int(max_branch)
        self.warm_up = int(warm_up)
        self.abandon_patience = int(abandon_patience)
        self.T_ema = int(T_ema)
        self.ema_alpha = float(ema_alpha)
        self.conf_thresh = float(conf_thresh)
        self.delta_slack = float(delta_slack)
        self.burst_aligned = int(burst_aligned)
        self.widen_burst = int(widen_burst)
        self.trend_thresh = float(trend_thresh)
        self.min_complete = int(min_complete)

    def run(self, ep):
        ep.branch_many(min(self.n_init, ep.pool_size), probe=True)
        deviant = np.zeros(ep.pool_size, dtype=np.int64)
        ema, history = 0.0, []
        r = 0
        while True:
            n = ep.num_opened
            latest, finished, active = ep.latest, ep.finished, ep.running
            finals = latest[finished]
            ema = self.ema_alpha * confidence(finals) + (1 - self.ema_alpha) * ema
            history.append(ema)
            trend = ema - history[-self.T_ema] if len(history) >= self.T_ema else 0.0
            leader = majority(finals) if len(finals) else majority(latest[active])
            aligned = np.zeros(n, dtype=bool)
            if r >= self.warm_up:
                if len(finals):
                    aligned = active & (latest == leader)
                    deviant[:n][aligned] = 0
                    deviant[:n][active & ~aligned] += 1
                    candidates = np.flatnonzero(active & (deviant[:n] >= self.abandon_patience))
                    keep_alive = 2
                    allowed = max(0, int(active.sum()) - keep_alive)
                    if allowed and len(candidates):
                        ep.prune_many(candidates[:allowed])
                        ep.trace("abandon", round=r, n=int(min(allowed, len(candidates))))
                else:
                    aligned = active.copy()  # no leader yet: nobody is deviant
            if (r >= self.warm_up and ema >= self.conf_thresh and trend >= -self.delta_slack
                    and len(finals) >= self.min_complete):
                ep.trace("stop", reason="confident", round=r, ema=ema)
                return leader
            if trend <= self.trend_thresh and ema < self.conf_thresh and r >= self.warm_up / 2:
                room = min(self.widen_burst, self.max_branch - n, ep.pool_size - n)
                if room > 0:
                    ep.branch_many(room, probe=True)
                    ep.trace("widen", round=r, n=room)
            running = ep.running
            fast = np.zeros(len(running), dtype=bool)
            fast[:n] = running[:n] & aligned  # branches opened this round advance once
            slow = running & ~fast
            if fast.any():
                ep.advance_many(fast, times=self.burst_aligned)
            if slow.any():
                ep.advance_many(slow)
            if not ep.running.any():
                finals = ep.final_answers
                finals = finals[ep.finished]
                ep.trace("stop", reason="exhausted", round=r)
                return majority(finals) if len(finals) else majority(ep.latest)
            r += 1
