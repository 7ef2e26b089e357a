import math

import pytest
import torch

from rsfm.tasks.probes.knn import knn_predict


def _points(angles_deg, norms):
    rad = [math.radians(a) for a in angles_deg]
    xy = [[r * math.cos(a), r * math.sin(a)] for a, r in zip(rad, norms, strict=True)]
    return torch.tensor(xy)


def test_hand_computed_scores():
    # Five training points in 2-D with different norms: only their directions matter.
    train = _points([0, 30, 90, 180, 270], [1.0, 3.0, 0.5, 2.0, 1.0])
    labels = torch.tensor([0, 0, 1, 1, 2])
    query = _points([10, 200], [2.0, 1.0])
    t = 0.5
    scores = knn_predict(train, labels, query, num_classes=3, k=3, temperature=t)

    def w(deg):
        return math.exp(math.cos(math.radians(deg)) / t)

    # Query at 10°: nearest are 0° (10°), 30° (20°), 90° (80°).
    # Query at 200°: nearest are 180° (20°), 270° (70°), 90° (110°).
    expected = torch.tensor(
        [
            [w(10) + w(20), w(80), 0.0],
            [0.0, w(20) + w(110), w(70)],
        ]
    )
    assert scores.dtype == torch.float32 and scores.shape == (2, 3)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    assert scores.argmax(1).tolist() == [0, 1]


def test_chunking_does_not_change_scores():
    g = torch.Generator().manual_seed(0)
    train, query = torch.randn(50, 8, generator=g), torch.randn(37, 8, generator=g)
    labels = torch.randint(0, 4, (50,), generator=g)
    full = knn_predict(train, labels, query, 4, k=7, chunk_size=1024)
    chunked = knn_predict(train, labels, query, 4, k=7, chunk_size=5)
    torch.testing.assert_close(full, chunked)


def test_k_larger_than_train_set_is_rejected():
    train, labels = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="k=5"):
        knn_predict(train, labels, torch.randn(2, 3), 2, k=5)
    # k == N is allowed: every training point votes.
    assert knn_predict(train, labels, torch.randn(2, 3), 2, k=4).shape == (2, 2)


def test_rejects_bad_labels_and_shapes():
    with pytest.raises(ValueError):
        knn_predict(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), torch.randn(2, 3), 3, k=2)
    with pytest.raises(ValueError):
        knn_predict(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), torch.randn(2, 5), 2, k=2)


def test_knn_on_real_aid_colour_histograms(aid_histograms):
    x, y = aid_histograms(["Forest", "Desert", "Parking"], 40)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:80], perm[80:]
    scores = knn_predict(x[train], y[train], x[test], num_classes=3, k=10)
    acc = (scores.argmax(1) == y[test]).float().mean().item()
    assert acc > 0.8, acc  # chance is 1/3
