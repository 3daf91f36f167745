"""Answer Convergence (Liu & Wang 2025): depth-only early stopping of one chain at a time.

Reasoning models often settle on their answer long before they stop thinking. Grow one chain,
probing after every interval, and stop it as soon as its last k probes agree; that converged
answer is the chain's vote. Larger β asks for a longer agreement run (k) and runs more chains in
sequence, voting over their converged answers (ties: first seen). A run of the model's "no answer"
output ('ERR') never counts as convergence.
"""


def majority(answers, skip):
    counts = {}
    for a in answers:
        if a >= 0 and a != skip:
            counts[a] = counts.get(a, 0) + 1
    return max(counts, key=counts.get) if counts else -1


class AnswerConvergence:
    NAME = "answer_convergence"

    @staticmethod
    def schedule(beta):
        b = min(max(beta, 0.0), 1.0)
        return {"k": 6 + round(10 * b), "chains": 1 + round(6 * b)}

    def __init__(self, k=12, chains=1):
        self.k = int(k)
        self.chains = int(chains)

    def run(self, ep):
        votes = []
        no_answer = ep.no_answer_class
        for _ in range(min(self.chains, ep.pool_size)):
            i = ep.branch(probe=True)
            run_answer, run_length = ep.latest_answer(i), 1
            while not ep.is_finished(i):
                if run_answer >= 0 and run_answer != no_answer and run_length >= self.k:
                    ep.trace("converged", branch=i, depth=ep.depth(i))
                    break
                a = ep.advance(i)
                if a == run_answer:
                    run_length += 1
                else:
                    run_answer, run_length = a, 1
            votes.append(ep.latest_answer(i))
        return majority(votes, no_answer)
