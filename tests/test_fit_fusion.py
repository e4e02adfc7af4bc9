"""tests/fit_fusion.py's fit: the listwise model finds the signal that tells answers apart."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fit_fusion  # noqa: E402


def _questions(rng: np.random.Generator, n: int = 200) -> list[dict]:
    """Questions of 20 candidates each: signal 1 (of 8) is higher for the answering passage,
    the others are noise."""
    out = []
    for _ in range(n):
        X = rng.random((20, len(fit_fusion.NAMES)))
        y = np.zeros(20, dtype=bool)
        y[rng.integers(20)] = True
        X[y, 1] += 0.6
        out.append({"X": X, "y": y, "doc": str(rng.integers(5))})
    return out


def test_the_fit_weighs_the_telling_signal_most_and_ranks_by_it():
    rng = np.random.default_rng(0)
    train, test = _questions(rng), _questions(rng)
    w = fit_fusion.fit(train, l2=1e-3)
    assert int(np.argmax(w)) == 1
    noise = np.ones(len(fit_fusion.NAMES))
    assert fit_fusion.score(test, w)[0] > fit_fusion.score(test, noise)[0] + 0.3
    top1, top5 = fit_fusion.score(test, w)
    assert 0.0 <= top1 <= top5 <= 1.0
    weights = fit_fusion.as_settings(w)
    assert set(weights) == set(fit_fusion.NAMES)
    assert abs(sum(weights[n] for n in fit_fusion.NAMES[:4]) - 1.0) < 0.01  # as Settings holds them


def test_questions_whose_candidates_are_all_or_none_answers_teach_nothing():
    rng = np.random.default_rng(1)
    data = _questions(rng, 50)
    same = fit_fusion.fit(data, l2=1e-3)
    padded = data + [{"X": rng.random((5, 8)), "y": np.zeros(5, dtype=bool), "doc": "x"},
                     {"X": rng.random((5, 8)), "y": np.ones(5, dtype=bool), "doc": "x"}]
    assert np.allclose(fit_fusion.fit(padded, l2=1e-3), same)
