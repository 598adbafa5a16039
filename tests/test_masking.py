"""Influence masks and masked statistics vs brute-force loops."""
import math

import pytest
import torch

from diffaudit.attacks import statistic
from diffaudit.errors import InputError
from diffaudit.masking import (channel_matched_mask, influence_mask, kept_count, masked_statistics, random_mask,
                               random_scores, reverse_mask)
from diffaudit.rng import sample_generator

SHAPE = (5, 3, 4, 4)  # N, C, H, W: d = 48


def ties_infl():
    """Influence with many exact ties (small integers) to pin the tie-breaking down."""
    return torch.randint(0, 6, SHAPE).double()


def loop_mask(infl, k, least=False):
    n, d = infl.shape[0], infl[0].numel()
    keep = d - math.floor(k * d / 100 + 1e-9)
    out = torch.zeros(n, d, dtype=torch.bool)
    for i in range(n):
        vals = infl[i].reshape(-1).tolist()
        # most influential first; equal values: lower flat index counts as more influential
        ranked = sorted(range(d), key=lambda j: (-vals[j], j))
        chosen = ranked[-keep:] if least else ranked[:keep]
        for j in chosen:
            out[i, j] = True
    return out.reshape(infl.shape)


def test_kept_count():
    assert kept_count(40, 10) == 6
    assert kept_count(0, 48) == 48
    assert kept_count(14.3, 1000) == 857  # the decimal 14.3, not its binary neighbour
    assert kept_count(99.9, 10) == 1
    assert kept_count(40, 48) == 48 - 19
    for bad in [100, -1, float("nan"), "40", True]:
        with pytest.raises(InputError):
            kept_count(bad, 10)


@pytest.mark.parametrize("k", [0, 10, 40, 73.5, 99])
def test_influence_and_reverse_masks_match_loop(k):
    for infl in [ties_infl(), torch.randn(SHAPE, dtype=torch.float64)]:
        assert torch.equal(influence_mask(infl, k), loop_mask(infl, k))
        assert torch.equal(reverse_mask(infl, k), loop_mask(infl, k, least=True))


def test_masks_reject_bad_input():
    infl = torch.randn(SHAPE)
    with pytest.raises(InputError, match=r"\[0, 100\)"):
        influence_mask(infl, 100)
    infl[2, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"sample\(s\) \[2\]"):
        influence_mask(infl, 40)


def test_random_mask_counts_seed_and_batch_independence():
    gens = lambda ids: [sample_generator(7, i, "mask/random") for i in ids]  # noqa: E731
    m = random_mask(SHAPE, 40, gens(range(5)))
    assert (m.reshape(5, -1).sum(1) == kept_count(40, 48)).all()
    assert torch.equal(m, random_mask(SHAPE, 40, gens(range(5))))
    alone = random_mask((1, *SHAPE[1:]), 40, gens([3]))
    assert torch.equal(m[3:4], alone)
    assert not torch.equal(m[0], m[1])
    one = random_mask(SHAPE, 40, torch.Generator().manual_seed(0))
    assert (one.reshape(5, -1).sum(1) == kept_count(40, 48)).all()
    with pytest.raises(InputError, match="generators"):
        random_mask(SHAPE, 40, gens(range(3)))


def test_channel_matched_mask_matches_loop():
    infl = torch.randn(SHAPE, dtype=torch.float64)
    infl[:, 1] -= 10  # a "dead" channel: the influence mask drops it almost entirely
    im = influence_mask(infl, 40)
    gens = lambda: [sample_generator(1, i, "mask/channel") for i in range(5)]  # noqa: E731
    cm = channel_matched_mask(im, gens())
    u = random_scores(SHAPE, gens())
    for i in range(5):
        for c in range(3):
            n_drop = int((~im[i, c]).sum())
            assert int((~cm[i, c]).sum()) == n_drop
            vals = u[i, c].reshape(-1).tolist()
            dropped = set(sorted(range(16), key=lambda j: (vals[j], j))[:n_drop])
            want = torch.tensor([j not in dropped for j in range(16)]).reshape(4, 4)
            assert torch.equal(cm[i, c], want)
    assert int((~cm[:, 1]).sum()) > int((~cm[:, 0]).sum())
    with pytest.raises(InputError):
        channel_matched_mask(im.reshape(5, -1), gens())


@pytest.mark.parametrize("p", [2, 4, 1.5, math.inf])
def test_masked_statistics_match_statistic_of_masks(p):
    ks = [0, 10, 40, 90, 99.5]
    v = torch.randn(SHAPE, dtype=torch.float64)
    for infl in [ties_infl(), torch.randn(SHAPE, dtype=torch.float64)]:
        for power in [True, False]:
            got = masked_statistics(v, infl, ks, p, power=power)
            want = torch.stack([statistic(v, p, influence_mask(infl, k), power=power) for k in ks], 1)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        rev = masked_statistics(v, infl, ks, p, reverse=True)
        want = torch.stack([statistic(v, p, reverse_mask(infl, k)) for k in ks], 1)
        torch.testing.assert_close(rev, want, rtol=1e-12, atol=1e-12)
    # random-drop control from the same ranking machinery
    gens = lambda: [sample_generator(3, i, "mask/random") for i in range(5)]  # noqa: E731
    got = masked_statistics(v, random_scores(SHAPE, gens()), [40], p)
    torch.testing.assert_close(got[:, 0], statistic(v, p, random_mask(SHAPE, 40, gens())), rtol=1e-12, atol=1e-12)


def test_masked_statistics_errors():
    v = torch.randn(SHAPE)
    with pytest.raises(InputError, match="shaped like"):
        masked_statistics(v, torch.randn(5, 48), [40], 2)
    with pytest.raises(InputError, match=r"\[0, 100\)"):
        masked_statistics(v, torch.randn(SHAPE), [40, 100], 2)
