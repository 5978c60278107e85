"""The form probe (devkit/form_probe.py) passes its held-out and impostor thresholds; the pack's palette probe,
fitted the analogous way on the same renders, fails the same suite.  The impostor suite is what it says it is.

Fitting the two CNNs takes a few minutes on 2 cores the first time; they are cached under the host's models/.
"""

import json

import pytest
import torch

from devkit import form_probe as fp
from devkit import glyph_world as gw
from devkit.host import ROOT


@pytest.fixture(scope="module")
def probes():
    return fp.fit_form_probe(), fp.fit_content_probe()


@pytest.mark.study  # fits the CNNs: minutes on 2 cores
def test_the_form_probe_passes_on_characters_it_never_saw(probes):
    form, _ = probes
    report = fp.certify(form)  # raises ProbeRefused below 0.95 or above 1/6 on any family
    assert report["valid"] and not report["failures"]
    assert report["held_out_accuracy_clean"] >= 0.95 and report["held_out_accuracy_augmented"] >= 0.95
    assert set(report["chars"]).isdisjoint(fp.FORM_RECIPE["chars"])  # never-seen characters only
    for family in ("reinked", "blurred", "shapeless"):
        entry = report["impostor_acceptance"][family]
        assert entry["count"] > 40 and entry["rate"] <= 1 / 6, (family, entry)
    assert report["impostor_acceptance"]["palette_swap"]["count"] == 0  # one palette: nothing to swap


@pytest.mark.study  # fits the ensemble again without the selection fold
def test_the_acceptance_threshold_is_the_one_chosen_without_the_never_seen_characters():
    selection = fp.select_accept()
    assert fp.FORM_RECIPE["accept"] == selection["chosen"]
    assert set(selection["fold"]) <= set(fp.FORM_RECIPE["chars"])  # a fold of the probe's own training characters
    assert set(selection["fold"]).isdisjoint(fp.UNSEEN)
    chosen = next(row for row in selection["rows"] if row["accept"] == selection["chosen"])
    assert chosen["eligible"] and all(chosen["accuracy_augmented"] >= row["accuracy_augmented"]
                                      for row in selection["rows"] if row["eligible"])


def test_the_committed_certification_is_this_recipe():
    committed = json.loads((ROOT / "experiments" / "form_styles" / "results" / "probe_certification.json").read_text())
    assert committed["form_probe"]["recipe"] == fp.FORM_RECIPE
    assert committed["form_probe"]["valid"] and committed["form_probe"]["accept_selection"]["chosen"] == \
        fp.FORM_RECIPE["accept"]
    assert not committed["palette_probe"]["valid"]


def test_the_palette_probe_fails_the_same_suite():
    report = fp.evaluate(fp.fit_palette_probe())
    assert not report["valid"]
    assert report["failures"], report


def test_a_refused_probe_raises():
    never = fp.FormProbe(fp.FormCNN(fp.JUNK + 1, channels=2))  # untrained: its answers are arbitrary
    with pytest.raises(fp.ProbeRefused):
        fp.certify(never)
    with pytest.raises(fp.ProbeRefused):
        never.require_valid()


@pytest.mark.study  # fits the CNN: minutes on 2 cores
def test_the_content_probe_reads_every_character_in_every_face(probes):
    _, content = probes
    accuracy = fp.content_accuracy(content)
    assert set(accuracy) == set(gw.CLASS_NAMES)
    assert min(accuracy.values()) >= 0.95, accuracy


def test_ink_amount_alone_cannot_tell_the_faces_apart():
    check = fp.ink_only_check()
    assert check["chance"] == pytest.approx(0.2)
    assert check["ink_mass"] <= 0.35, check


def test_the_impostors_are_built_as_described():
    suite = fp.impostor_suite()
    chars = gw.ids(fp.UNSEEN)
    reinked = suite["reinked"]["maps"].view(len(chars), len(gw.STYLES), 3, gw.SIZE, gw.SIZE)
    for i, c in enumerate(chars):
        for k in range(len(gw.STYLES)):
            target = float(gw.coverage(c, k).sum())
            for variant in range(3):  # halo or fade, tint or fade, thicken or thin: all at the style's ink mass
                assert float(reinked[i, k, variant].sum()) == pytest.approx(target, rel=0.02)
    shapeless = suite["shapeless"]["maps"]
    glyph = gw.coverage(chars[0], 0)
    assert torch.equal(shapeless[0].flatten().sort().values, glyph.flatten().sort().values)  # shuffled pixels
    assert float(shapeless[1].sum()) == pytest.approx(float(glyph.sum()), rel=1e-3)  # a blob of the same ink
    blurred = suite["blurred"]["maps"]
    assert blurred.shape[0] == len(chars) * (len(gw.STYLES) + 1)
    assert blurred.max() < 0.9  # no full-ink pixel survives σ = 2 px on these strokes


def test_blur_and_moves_are_what_they_claim():
    x = torch.zeros(1, 32, 32)
    x[0, 16, 16] = 1.0
    blurred = fp.gaussian_blur(x, 1.0)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-5)
    ys = torch.arange(32, dtype=torch.float32) - 16
    assert float((blurred[0].sum(1) * ys ** 2).sum()) == pytest.approx(1.0, rel=0.02)  # variance σ² = 1
    still = fp.affine(x, torch.zeros(1, 2), torch.ones(1), torch.zeros(1))
    assert torch.allclose(still, x, atol=1e-6)
    moved = fp.affine(x, torch.tensor([[2.0, 0.0]]), torch.ones(1), torch.zeros(1))
    assert float(moved[0, 16, 18]) == pytest.approx(1.0, abs=1e-5)
