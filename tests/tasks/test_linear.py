import inspect

import pytest
import torch

from rsfm.tasks.probes.linear import linear_probe, train_linear_head

CLASSES = ["Forest", "Desert", "Parking"]


@pytest.fixture(scope="module")
def aid_hist(aid_histograms):
    """Colour histograms of 50 real AID images per class, split 80/20 (seeded)."""
    x, y = aid_histograms(CLASSES, 50)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, va = perm[:120], perm[120:]
    return x[tr], y[tr], x[va], y[va]


def test_learns_real_features(aid_hist, one_thread):
    xt, yt, xv, yv = aid_hist
    r = linear_probe(xt, yt, xv, yv, num_classes=3, epochs=60)
    assert r.preds.shape == (30,) and r.preds.dtype == torch.int64
    assert r.logits.shape == (30, 3) and r.logits.dtype == torch.float32
    assert r.lr in r.grid and len(r.grid) == 5
    train_acc = (r.head(xt).argmax(1) == yt).float().mean().item()
    assert train_acc > 0.95, train_acc
    assert r.accuracy > 85, r.accuracy
    assert r.accuracy == pytest.approx(100 * (r.preds == yv).float().mean().item())


def test_deterministic_with_seed(aid_hist):
    xt, yt, xv, yv = aid_hist
    a = linear_probe(xt, yt, xv, yv, 3, epochs=10, lr=0.1, seed=3)
    b = linear_probe(xt, yt, xv, yv, 3, epochs=10, lr=0.1, seed=3)
    c = linear_probe(xt, yt, xv, yv, 3, epochs=10, lr=0.1, seed=4)
    assert torch.equal(a.logits, b.logits)
    assert not torch.equal(a.logits, c.logits)
    assert a.grid == {}  # a single lr: no search


def test_lr_choice_never_sees_heldout(aid_hist):
    xt, yt, xv, yv = aid_hist
    grid = (0.001, 0.1, 1.0)
    ref = linear_probe(xt, yt, xv, yv, 3, epochs=20, lr=grid)
    # Scrambled held-out labels, random held-out features, or none at all: same choice.
    perm = torch.randperm(len(yv), generator=torch.Generator().manual_seed(1))
    for vf, vl in [(xv, yv[perm]), (torch.rand_like(xv), yv), (xv, None)]:
        r = linear_probe(xt, yt, vf, vl, 3, epochs=20, lr=grid)
        assert r.lr == ref.lr and r.grid == ref.grid
    assert r.accuracy is None and torch.equal(r.preds, ref.preds)
    assert "val_labels" in inspect.signature(linear_probe).parameters


def test_head_is_bn_without_affine_plus_linear():
    head = train_linear_head(torch.randn(16, 4), torch.arange(16) % 2, 2, lr=0.1, epochs=1)
    bn, fc = head
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine
    assert isinstance(fc, torch.nn.Linear) and fc.out_features == 2
    assert not head.training


def test_a_one_shot_probe_trains_at_the_grids_middle_rate_and_says_so(aid_hist):
    """One real AID image per class: nothing can be held out to choose the rate. It used to end in
    ``ValueError: min() arg is an empty sequence`` (every score NaN)."""
    xt, yt, xv, yv = aid_hist
    shots = torch.stack([(yt == c).nonzero()[0, 0] for c in range(3)])
    with pytest.warns(UserWarning, match="no class has 2 training samples"):
        r = linear_probe(xt[shots], yt[shots], xv, yv, 3, epochs=50)
    assert r.lr == 0.1 and r.grid == {}
    assert (r.head(xt[shots]).argmax(1) == yt[shots]).all()  # it did train
    assert r.preds.shape == (30,) and r.accuracy is not None
    # one class with two samples is enough for a search
    two = torch.cat([shots, (yt == 0).nonzero()[1]])
    assert len(linear_probe(xt[two], yt[two], xv, yv, 3, epochs=5).grid) == 5
