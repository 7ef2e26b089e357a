"""GeRSP's pieces against hand-computed values, its losses, and the teacher update rules."""

import math
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from rsfm.methods.base import StepContext
from rsfm.methods.gersp import (
    GeRSP,
    NegativeQueue,
    batch_shuffle,
    batch_unshuffle,
    build_projector,
    concat_all_gather,
    ema_update,
    info_nce,
)
from rsfm.utils.errors import ConfigError

# -- queue ---------------------------------------------------------------------------------


def test_queue_enqueue_dequeue_and_wrap_around() -> None:
    q = NegativeQueue(size=5, dim=2)
    assert q.keys.shape == (5, 2) and int(q.ptr) == 0
    assert torch.allclose(q.keys.norm(dim=1), torch.ones(5))  # random unit vectors at start
    a = torch.arange(6.0).reshape(3, 2)  # keys 0, 1, 2
    q.enqueue(a)
    assert int(q.ptr) == 3 and torch.equal(q.keys[:3], a)
    b = torch.arange(100.0, 106.0).reshape(3, 2)  # 5 is not a multiple of 3: wraps
    q.enqueue(b)
    assert int(q.ptr) == 1
    # rows 3, 4 take b[0], b[1]; row 0 (the oldest, a[0]) is dequeued and takes b[2]
    assert torch.equal(q.keys, torch.stack([b[2], a[1], a[2], b[0], b[1]]))
    # more keys than the queue holds: only the last K stay, oldest first after the pointer
    c = torch.arange(200.0, 214.0).reshape(7, 2)
    q.enqueue(c)
    assert int(q.ptr) == (1 + 7) % 5
    order = [(int(q.ptr) + i) % 5 for i in range(5)]  # oldest to newest
    assert torch.equal(q.keys[order], c[-5:])
    q.enqueue(torch.empty(0, 2))
    assert int(q.ptr) == 3
    with pytest.raises(ValueError, match=r"keys must be \(n, 2\)"):
        q.enqueue(torch.zeros(2, 3))
    # negatives() is a copy: enqueueing later must not change what a loss already used
    neg = q.negatives()
    q.enqueue(torch.zeros(1, 2))
    assert not torch.equal(neg, q.keys)


def test_queue_is_checkpointed() -> None:
    q = NegativeQueue(4, 3)
    q.enqueue(torch.ones(2, 3))
    state = q.state_dict()
    assert set(state) == {"keys", "ptr"}
    r = NegativeQueue(4, 3)
    r.load_state_dict(state)
    assert torch.equal(r.keys, q.keys) and int(r.ptr) == 2


# -- EMA -----------------------------------------------------------------------------------


def test_ema_update_against_hand_computed() -> None:
    student, teacher = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([1.0, 2.0]))
        student.bias.copy_(torch.tensor([-1.0, 4.0]))
        teacher.weight.copy_(torch.tensor([3.0, 0.0]))
        teacher.bias.copy_(torch.tensor([0.5, 0.5]))
        student.running_mean.copy_(torch.tensor([7.0, 8.0]))
    ema_update(teacher, student, momentum=0.9)
    # 0.9 * teacher + 0.1 * student
    assert torch.allclose(teacher.weight, torch.tensor([2.8, 0.2]))
    assert torch.allclose(teacher.bias, torch.tensor([0.35, 0.85]))
    assert torch.equal(teacher.running_mean, torch.tensor([7.0, 8.0]))  # buffers copied
    ema_update(teacher, student, momentum=1.0)
    assert torch.allclose(teacher.weight, torch.tensor([2.8, 0.2]))
    ema_update(teacher, student, momentum=0.0)
    assert torch.equal(teacher.weight, student.weight)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(teacher, student, 1.5)
    with pytest.raises(ValueError, match="structures"):
        ema_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 0.5)


# -- InfoNCE -------------------------------------------------------------------------------


def test_info_nce_against_hand_computed() -> None:
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    k = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]])
    tau = 0.5
    # row 0: positive 0.8; negatives 0, -1, 0.6.  row 1: positive 0.8; negatives 0.8, -0.6, -0.28
    rows = [(0.8, [0.0, -1.0, 0.6]), (0.8, [0.8, -0.6, -0.28])]
    expected = sum(
        -math.log(math.exp(p / tau) / (math.exp(p / tau) + sum(math.exp(n / tau) for n in ns))) for p, ns in rows
    ) / len(rows)
    loss, logits = info_nce(q, k, negatives, tau)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert logits.shape == (2, 4) and logits[0, 0].item() == pytest.approx(0.8 / tau)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, k, negatives, 0.0)
    with pytest.raises(ValueError, match="expected q, k"):
        info_nce(q, k[:1], negatives)


def test_projector_shapes() -> None:
    p = build_projector(2048, 2048, 128)
    assert [type(m) for m in p] == [nn.Linear, nn.ReLU, nn.Linear]
    assert p(torch.zeros(3, 2048)).shape == (3, 128)
    assert isinstance(build_projector(192, 192, 128, bn=True)[1], nn.BatchNorm1d)


def test_single_process_gather_and_shuffle_are_identities() -> None:
    x = torch.arange(12.0).reshape(6, 2)
    g, sizes = concat_all_gather(x)
    assert torch.equal(g, x) and sizes == [6]
    shuffled, order, sizes = batch_shuffle(x, torch.Generator().manual_seed(0))
    assert torch.equal(shuffled, x[order])
    assert torch.equal(batch_unshuffle(shuffled * 2, order, sizes), x * 2)


# -- the method ----------------------------------------------------------------------------


def _tiny(**kw) -> GeRSP:
    torch.manual_seed(0)
    opts = dict(num_classes=10, arch="vit", size="tiny", img_size=32, patch_size=8, queue_size=64)
    return GeRSP(**{**opts, **kw})


def _batch(b: int = 4, size: int = 32):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(b, 3, size, size, generator=g),
        torch.randn(b, 3, size, size, generator=g),
        torch.randn(b, 3, size, size, generator=g),
        torch.randint(0, 10, (b,), generator=g),
    )


def test_loss_composition(one_thread) -> None:
    q, k, nat, y = _batch()
    full = _tiny(alpha=0.5)
    out = full(q, k, nat, y)
    assert out["loss"].item() == pytest.approx(out["loss_con"].item() + 0.5 * out["loss_ce"].item(), rel=1e-6)
    assert out["loss_con"].item() > 0 and out["loss_ce"].item() > 0
    assert int(full.queue.ptr) == 4 and torch.equal(full.queue.keys[:4], out["keys"])

    moco = _tiny(alpha=0.0)  # MoCo only: no classifier loss, natural images not forwarded
    out = moco(q, k, nat, y)
    assert out["loss_ce"].item() == 0 and out["loss"].item() == pytest.approx(out["loss_con"].item())
    assert not any(p.requires_grad for p in moco.classifier.parameters())

    natural = _tiny(contrastive=False)  # natural supervision only: no contrast, no queue update
    out = natural(q, k, nat, y)
    assert out["loss_con"].item() == 0 and out["loss"].item() == pytest.approx(out["loss_ce"].item())
    assert int(natural.queue.ptr) == 0 and "keys" not in out
    assert torch.isclose(out["loss_ce"], F.cross_entropy(natural.classifier(natural.features(nat)), y))
    with pytest.raises(ValueError, match="no loss"):
        _tiny(alpha=0.0, contrastive=False)


def test_one_student_pass_mixes_domains_in_batchnorm(one_thread) -> None:
    # ResNet-50: the student's BatchNorm sees RS queries and natural images in one batch
    model = GeRSP(num_classes=10, arch="resnet50", img_size=32, queue_size=16)
    calls = []
    model.encoder.bn1.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    q, k, nat, y = _batch(2)
    model(q, k, nat, y)
    assert calls == [4]  # [2 queries, 2 natural images] in one forward
    assert model.export_meta() == {"arch": "resnet50", "img_size": 32, "in_chans": 3}
    assert model.features(q).shape == (2, 2048)


def _step(model: GeRSP) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(*_batch())["loss"].backward()
    opt.step()
    model.update_teacher()


def test_released_teacher_projector_never_changes_default_updates_it(one_thread) -> None:
    for ema_projector in (False, True):
        model = _tiny(ema_projector=ema_projector, momentum=0.5)
        # weights only: BatchNorm running statistics move with every teacher forward anyway
        before = {k: v.clone() for k, v in model.teacher_projector.named_parameters()}
        enc_before = model.teacher_encoder.blocks[0].mlp.fc1.weight.clone()
        _step(model)
        after = dict(model.teacher_projector.named_parameters())
        unchanged = all(torch.equal(before[k], after[k]) for k in before)
        assert unchanged is (not ema_projector)
        # the backbone is EMA-updated either way
        assert not torch.equal(enc_before, model.teacher_encoder.blocks[0].mlp.fc1.weight)


def test_vit_moco_v3_details() -> None:
    model = _tiny()
    assert not any(p.requires_grad for p in model.encoder.patch_embed.parameters())
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.projector)
    assert not any(p.requires_grad for p in model.teacher_encoder.parameters())
    with pytest.raises(ValueError, match="model.arch"):
        _tiny(arch="convnext")


def test_num_classes_is_required() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        _tiny(num_classes=None)


def _empty(size: int = 32):
    return (
        torch.zeros(0, 3, size, size),
        torch.zeros(0, 3, size, size),
        torch.zeros(0, 3, size, size),
        torch.zeros(0, dtype=torch.long),
    )


def test_empty_batch_in_one_process_gives_a_zero_loss_with_a_grad_path(one_thread) -> None:
    model = _tiny()
    keys_before = model.queue.keys.clone()
    ctx = StepContext(progress=0.0, shared_generator=torch.Generator().manual_seed(0))
    q, k, nat, y = _empty()
    out = model.training_step({"image": q, "image_key": k, "natural": nat, "natural_label": y}, ctx)
    assert set(out) == {"loss", "loss_con", "loss_ce", "acc_con", "acc_natural"}
    assert out["loss"].item() == 0.0 and out["loss"].requires_grad
    assert all(v.item() == 0.0 and not v.requires_grad for name, v in out.items() if name != "loss")
    assert int(model.queue.ptr) == 0 and torch.equal(model.queue.keys, keys_before)  # nothing enqueued
    out["loss"].backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable)  # joins DDP's all-reduce
    assert all(not p.grad.any() for _, p in trainable)  # ... with zeros
    assert all(p.grad is None for p in model.teacher_encoder.parameters())
    # natural supervision only: no keys to gather, still a zero loss with a grad path
    natural = _tiny(contrastive=False)
    out = natural(*_empty())
    assert out["loss"].item() == 0.0 and out["loss"].requires_grad and int(natural.queue.ptr) == 0


# -- DDP: keys of both ranks reach the queue -----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # a collective that one rank never joins fails after the timeout instead of hanging
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        model = _tiny(queue_size=10)  # same weights on both ranks (seeded)
        g = torch.Generator().manual_seed(100 + rank)  # different images per rank
        b = 3
        q, k, nat = (torch.randn(b, 3, 32, 32, generator=g) for _ in range(3))
        y = torch.randint(0, 10, (b,), generator=g)
        out_ = model(q, k, nat, y, generator=torch.Generator().manual_seed(7))
        # shuffle-BN round trip across ranks
        x = torch.arange(b * 2.0).reshape(b, 2) + 100 * rank
        shuffled, order, sizes = batch_shuffle(x, torch.Generator().manual_seed(3))
        restored = batch_unshuffle(shuffled, order, sizes)
        first = {
            "keys": out_["keys"],
            "queue": model.queue.keys.clone(),
            "ptr": int(model.queue.ptr),
            "restored": restored,
            "x": x,
            "shuffled": shuffled,
        }
        # second step: every file of rank 1's batch was unreadable, its batch is empty
        n = b if rank == 0 else 0
        q, k, nat = (torch.randn(n, 3, 32, 32, generator=g) for _ in range(3))
        y = torch.randint(0, 10, (n,), generator=g)
        second = model(q, k, nat, y, generator=torch.Generator().manual_seed(8))
        second["loss"].backward()
        trainable = [p for p in model.parameters() if p.requires_grad]
        torch.save(
            {
                "first": first,
                "keys2": second.get("keys"),  # rank 0's keys (rank 1 has none)
                "loss2": second["loss"].detach(),
                "ptr2": int(model.queue.ptr),
                "queue2": model.queue.keys.clone(),
                "grads": sum(p.grad is not None for p in trainable) == len(trainable),
                "grad_norm": float(sum(p.grad.abs().sum() for p in trainable if p.grad is not None)),
            },
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _spawn_two(fn, *args, timeout: float = 180.0) -> None:
    """Run ``fn(rank, 2, *args)`` in two spawned processes; fail (killing them) past ``timeout`` seconds."""
    ctx = mp.start_processes(fn, args=(2, *args), nprocs=2, start_method="spawn", join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):  # re-raises a worker's exception
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"the two DDP workers did not finish within {timeout:.0f} s (a collective hung)")


def test_ddp_queue_receives_keys_of_both_ranks_and_an_empty_rank_joins(tmp_path: Path) -> None:
    _spawn_two(_ddp_worker, _free_port(), str(tmp_path))
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    r0, r1 = s0["first"], s1["first"]
    assert r0["ptr"] == r1["ptr"] == 2 * 3  # world_size x batch
    both = torch.cat([r0["keys"], r1["keys"]])
    assert torch.allclose(r0["queue"][:6], both) and torch.equal(r0["queue"], r1["queue"])
    assert not torch.allclose(r0["keys"], r1["keys"])
    # shuffle-BN: each rank forwards a mix of both ranks' samples, then gets its own rows back
    assert torch.equal(r0["restored"], r0["x"]) and torch.equal(r1["restored"], r1["x"])
    mixed = torch.cat([r0["shuffled"], r1["shuffled"]])
    assert sorted(mixed[:, 0].tolist()) == sorted(torch.cat([r0["x"], r1["x"]])[:, 0].tolist())
    assert not torch.equal(r0["shuffled"], r0["x"])
    # step 2, rank 1 empty: both ranks completed the gathers; the queue advanced by rank 0's keys only
    assert s0["ptr2"] == s1["ptr2"] == 6 + 3
    assert torch.equal(s0["queue2"], s1["queue2"])
    assert torch.allclose(s0["queue2"][6:9], s0["keys2"], atol=1e-6)
    assert torch.equal(s0["queue2"][:6], r0["queue"][:6])  # older keys untouched
    # both losses went backward: rank 0's a real loss, rank 1's a zero touching every parameter
    assert s0["loss2"].item() > 0 and s1["loss2"].item() == 0.0
    assert s0["grads"] and s1["grads"]
    assert s0["grad_norm"] > 0 and s1["grad_norm"] == 0.0
