"""tests/peer_check.py in the suite: every recipe piece against the record's own code, the whole 11 x 768 model's loss
and gradients (slow), and proof that the check fails when our side is wrong. Skipped where the record's folder is
absent (PEER_RECORD, or ../shared/peer/record_2026-08 beside the repo)."""
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_record as R  # noqa: E402

pytestmark = pytest.mark.skipif(not R.available(), reason="the record's folder (PEER_RECORD) is absent")


@pytest.fixture(scope="module")
def peer():
    R.load()
    import peer_check
    return peer_check


def run_pieces(peer, names=None, skip_model=False):
    lines = []
    rc = peer.run(names, skip_model=skip_model, out=lines.append)
    return rc, lines


@pytest.mark.slow
def test_every_recipe_piece_matches_the_record(peer):
    rc, lines = run_pieces(peer, skip_model=True)
    assert rc == 0, "\n".join(lines)
    n = len(peer.PIECES) - len(peer.MODEL_PIECES)
    assert n >= 15 and lines[-1] == f"peer check: {n} of {n} pieces match"
    for line in lines[:-1]:
        diff, tol = map(float, re.search(r"max \|diff\| (\S+) \(tolerance (\S+)\) ok", line).groups())
        assert diff <= tol


def test_a_wrong_piece_fails_and_the_others_still_run(peer, monkeypatch):
    """Polar Express with its first coefficient 1% off: that piece FAILs, the next one still runs and passes."""
    coeffs = list(peer.T.POLAR_EXPRESS_COEFFS)
    coeffs[0] = (coeffs[0][0] * 1.01, *coeffs[0][1:])
    monkeypatch.setattr(peer.T, "POLAR_EXPRESS_COEFFS", coeffs)
    rc, lines = run_pieces(peer, {"polar_express", "tie_then_untie"})
    assert rc == 1 and lines[-1] == "peer check: 1 of 2 pieces match"
    assert any(l.startswith("polar_express:") and "FAIL" in l for l in lines)


def test_a_piece_that_raises_is_a_fail_with_its_reason(peer, monkeypatch):
    monkeypatch.setitem(peer.PIECES, "polar_express", lambda: 1 / 0)
    rc, lines = run_pieces(peer, {"polar_express"})
    assert rc == 1 and "FAIL (ZeroDivisionError" in lines[0]


@pytest.mark.slow
def test_the_whole_model_matches_the_record(peer):
    """Both 11 x 768 models from the same weights: the losses, every gradient group by piece, the validation loss and
    3 steps of the full recipe (one shared computation, ~2.5 minutes alone, 13 GB at peak)."""
    names = {"layer_plan"} | peer.MODEL_PIECES
    rc, lines = run_pieces(peer, names)
    assert rc == 0, "\n".join(lines)
    assert lines[-1] == f"peer check: {len(names)} of {len(names)} pieces match"
