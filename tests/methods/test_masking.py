import pytest
import torch

from rsfm.methods.masking import (
    gather_tokens,
    normalize_patch_targets,
    patchify,
    random_token_mask,
    unpatchify,
)


def test_patchify_roundtrip_and_layout() -> None:
    x = torch.arange(2 * 3 * 32 * 48, dtype=torch.float32).view(2, 3, 32, 48)
    p = patchify(x, 16)
    assert p.shape == (2, 6, 16 * 16 * 3)
    # patch 1 is the second in the first row: columns 16..31; element 0 is pixel (0, 16), channel 0
    assert p[0, 1, 0] == x[0, 0, 0, 16]
    assert p[0, 1, 1] == x[0, 1, 0, 16]  # channels are innermost
    assert torch.equal(unpatchify(p, 16, (2, 3), 3), x)
    with pytest.raises(ValueError, match="multiple"):
        patchify(torch.zeros(1, 3, 30, 32), 16)


def test_random_mask_counts_disjoint_and_seeded() -> None:
    g = torch.Generator().manual_seed(3)
    keep, masked = random_token_mask(8, 196, 0.75, generator=g)
    assert keep.shape == (8, 49) and masked.shape == (8, 147)
    both = torch.cat([keep, masked], 1).sort(1).values
    assert torch.equal(both, torch.arange(196).expand(8, -1))  # disjoint and complete
    keep2, _ = random_token_mask(8, 196, 0.75, generator=torch.Generator().manual_seed(3))
    assert torch.equal(keep, keep2)
    keep3, _ = random_token_mask(8, 196, 0.75, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(keep, keep3)
    with pytest.raises(ValueError):
        random_token_mask(1, 10, 1.0)


def test_gather_and_norm_pix() -> None:
    x = torch.randn(2, 10, 4)
    ids = torch.tensor([[3, 1], [0, 9]])
    out = gather_tokens(x, ids)
    assert torch.equal(out[1, 1], x[1, 9])
    t = normalize_patch_targets(torch.randn(2, 5, 768) * 3 + 7)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(t.var(-1), torch.ones(2, 5), atol=1e-3)
