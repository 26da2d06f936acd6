import torch

from musicguide.operators import SampleMask, TimeMask
from musicguide.measurement import free_range_mask


def _masks(frames: int = 12):
    return [
        TimeMask.from_ranges(frames, [(0, 5)]),  # A_L: continuation
        TimeMask.from_ranges(frames, [(frames - 3, frames)]),  # A_R
        free_range_mask(frames, (4, frames - 2)),
        TimeMask.from_ranges(frames, [(1, 3), (6, 7), (10, 40)]),
    ]


def test_adjoint_identity():
    g = torch.Generator().manual_seed(0)
    for mask in _masks():
        x = torch.randn(3, 4, mask.frames, generator=g, dtype=torch.float64)
        y = torch.randn(3, 4, mask.n_known, generator=g, dtype=torch.float64)
        lhs = (mask.forward(x) * y).sum()
        rhs = (x * mask.transpose(y)).sum()
        torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_selection_is_a_partial_isometry():
    g = torch.Generator().manual_seed(1)
    for mask in _masks():
        y = torch.randn(2, 3, mask.n_known, generator=g)
        assert torch.equal(mask.forward(mask.transpose(y)), y)  # A Aᵀ = I
        x = torch.randn(2, 3, mask.frames, generator=g)
        # AᵀA is the projection onto the known frames and I − AᵀA onto the free ones
        assert torch.equal(mask.transpose(mask.forward(x)) + mask.keep_free(x), x)


def test_masks_select_the_intended_frames():
    assert free_range_mask(6, (1, 6 - 2)).known.tolist() == [True, False, False, False, True, True]
    assert TimeMask.from_ranges(5, [(-3, 1), (4, 9)]).known.tolist() == [True, False, False, False, True]
    # ranges that clip to nothing mark nothing (a negative end must not count from the back)
    assert TimeMask.from_ranges(5, [(0, -2), (7, 9), (3, 3)]).known.tolist() == [False] * 5


def test_paste_replaces_known_and_keeps_free():
    mask = free_range_mask(10, (3, 10 - 2))
    x = torch.randn(1, 2, 10)
    y = torch.full((1, 2, 5), 7.0)
    out = mask.paste(x, y)
    assert torch.equal(mask.forward(out), y)
    assert torch.equal(out[..., 3:8], x[..., 3:8])


def test_sample_mask_selects_samples():
    known = torch.tensor([True, False, True, True])
    audio = torch.arange(8.0).view(1, 2, 4)
    assert SampleMask(known)(audio).tolist() == [[[0.0, 2.0, 3.0], [4.0, 6.0, 7.0]]]
