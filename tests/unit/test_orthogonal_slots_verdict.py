"""The Orthogonal Adaptation verdict, read off synthetic results (it writes the README's conclusion)."""

from experiments.orthogonal_slots.report import verdict

BASE = [1.0, 1.0, 1.0, 1.0]


def _arm(alone: float, rises: list[float]) -> dict:
    runs = [{"styles": [{"alone": alone, "rise": r, "merged": alone + r} for _ in BASE], "overlap": 0.0}
            for r in rises]
    return {"lr": 1e-3, "runs": runs}


def test_holds_when_slots_cross_talk_clearly_less_and_learn_as_much():
    text = verdict({"plain": _arm(0.2, [0.4, 0.5, 0.45]), "slots": _arm(0.3, [0.01, 0.02, 0.0])}, BASE)[0]
    assert text.startswith("**Verdict: the claim holds here.**") and "88%" in text  # (1 - 0.3) / (1 - 0.2)


def test_not_informative_when_the_slots_learned_little_alone():
    text = verdict({"plain": _arm(0.2, [0.4, 0.5, 0.45]), "slots": _arm(0.9, [0.0, 0.0, 0.01])}, BASE)[0]
    assert text.startswith("**Verdict: not informative.**") and "12%" in text


def test_does_not_hold_when_the_spreads_overlap():
    text = verdict({"plain": _arm(0.2, [0.1, 0.3, 0.2]), "slots": _arm(0.2, [0.05, 0.25, 0.15])}, BASE)[0]
    assert text.startswith("**Verdict: the claim does not hold here.**")
