import pytest
import torch

from rsfm.methods.selection import psts_mix, psts_select, select_by_score, select_targets, token_budget


def test_budget_matches_paper() -> None:
    b = token_budget(196, 0.85, 0.25)
    assert (b.n_visible, b.n_seed, b.n_target) == (29, 14, 49)
    with pytest.raises(ValueError, match="rec_ratio"):
        token_budget(196, 0.5, 0.75)


def test_select_by_score_topk_and_sample() -> None:
    scores = torch.arange(20.0).expand(3, -1)
    top = select_by_score(scores, 5)
    assert torch.equal(top.sort(1).values, torch.arange(15, 20).expand(3, -1))
    g = torch.Generator().manual_seed(0)
    s1 = select_by_score(scores, 5, "sample", generator=g)
    s2 = select_by_score(scores, 5, "sample", generator=torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2)
    assert all(len(set(r.tolist())) == 5 for r in s1)
    exclude = torch.zeros(3, 20, dtype=torch.bool)
    exclude[:, 15:] = True
    assert select_by_score(scores, 5, exclude=exclude).max() < 15


def test_constant_score_sampling_is_uniform() -> None:
    # the released 'official' score is ~0 everywhere: sampling must then be uniform
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(16)
    for _ in range(400):
        ids = select_by_score(torch.zeros(8, 16), 4, "sample", generator=g)
        counts += torch.bincount(ids.flatten(), minlength=16)
    freq = counts / counts.sum()
    assert (freq - 1 / 16).abs().max() < 0.01


@pytest.mark.parametrize(
    "t,stage,near,far,rand",
    [(0.0, 1, 1, 0, 0), (0.3625, 2, 0.5, 0.5, 0), (0.5, 3, 0, 1, 0), (0.7375, 4, 0, 0.5, 0.5), (0.9, 5, 0, 0, 1)],
)
def test_psts_stage_by_progress(t: float, stage: int, near: float, far: float, rand: float) -> None:
    m = psts_mix(t)
    assert m.stage == stage
    assert (m.near, m.far, m.random) == pytest.approx((near, far, rand))


def test_psts_stage_boundaries_scale_with_run() -> None:
    # released code: epochs 280/300/580/600 of 800
    for epoch, stage in [(279, 1), (280, 2), (299, 2), (300, 3), (579, 3), (580, 4), (600, 5)]:
        assert psts_mix(epoch / 800).stage == stage


def _embeddings() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(4, 49, 16)


def test_psts_counts_disjoint_and_near_far() -> None:
    e = _embeddings()
    seeds = torch.tensor([[0, 1, 2]] * 4)
    near = psts_select(e, seeds, 11, progress=0.0)
    far = psts_select(e, seeds, 11, progress=0.5)
    for added in (near, far):
        assert added.shape == (4, 8)
        full = torch.cat([seeds, added], 1)
        assert all(len(set(r.tolist())) == 11 for r in full)
    # first step of stage 1 picks the candidates most similar to the seeds, stage 3 the least
    en = torch.nn.functional.normalize(e, dim=-1)
    sim = torch.einsum("bnd,bkd->bnk", en, en[:, :3]).amax(-1)
    sim[:, :3] = float("nan")
    cand = sim[0].nan_to_num(float("-inf"))
    assert set(near[0, :4].tolist()) == set(cand.topk(4).indices.tolist())
    cand = (-sim[0]).nan_to_num(float("-inf"))
    assert set(far[0, :4].tolist()) == set(cand.topk(4).indices.tolist())


def test_psts_random_stage_is_seeded() -> None:
    e = _embeddings()
    seeds = torch.tensor([[0, 1, 2]] * 4)
    a = psts_select(e, seeds, 11, progress=0.95, generator=torch.Generator().manual_seed(5))
    b = psts_select(e, seeds, 11, progress=0.95, generator=torch.Generator().manual_seed(5))
    c = psts_select(e, seeds, 11, progress=0.95, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_targets_exclude_visible() -> None:
    scores = torch.rand(4, 49)
    visible = torch.stack([torch.randperm(49)[:7] for _ in range(4)])
    t = select_targets(scores, visible, 12)
    assert t.shape == (4, 12)
    for v, tt in zip(visible, t, strict=True):
        assert not set(v.tolist()) & set(tt.tolist())
    # top-k: the targets are the richest non-visible patches
    masked = scores.scatter(1, visible, float("-inf"))
    assert torch.equal(t.sort(1).values, masked.topk(12).indices.sort(1).values)


def test_psts_adds_the_larger_step_last_as_the_release() -> None:
    from rsfm.methods.selection import psts_step_sizes

    # ViT-B/16 at 224 px, m = 0.85, seed ratio 0.5: 29 visible, 14 seeds, 15 added in 7 then 8
    b = token_budget(196, 0.85, 0.25, 0.5)
    assert psts_step_sizes(b.n_visible - b.n_seed, 2) == [7, 8]
    assert (
        psts_step_sizes(10, 3) == [3, 3, 4] and psts_step_sizes(2, 3) == [0, 1, 1] and psts_step_sizes(0, 2) == [0, 0]
    )
    with pytest.raises(ValueError):
        psts_step_sizes(5, 0)
