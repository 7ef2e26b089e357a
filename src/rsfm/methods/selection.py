"""SelectiveMAE token selection: seeds, Progressive Semantic Token Selection, targets.

Wang et al., "Scaling Efficient Masked Image Modeling on Large Remote Sensing Dataset"
(arXiv 2406.11933), §3.2–3.3, with the paper's token budgets and schedule. Every function
takes per-patch scores or embeddings and returns int64 token indices; none needs gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rsfm.methods.masking import gather_tokens

__all__ = [
    "PSTSMix",
    "TokenBudget",
    "psts_counts",
    "psts_mix",
    "psts_select",
    "psts_step_sizes",
    "select_by_score",
    "select_targets",
    "token_budget",
]


@dataclass(frozen=True)
class TokenBudget:
    """Token counts for one image (Wang et al., arXiv 2406.11933)."""

    num_patches: int
    n_visible: int
    n_seed: int
    n_target: int


def token_budget(num_patches: int, mask_ratio: float, rec_ratio: float, seed_ratio: float = 0.5) -> TokenBudget:
    """Visible, seed and reconstruction-target counts.

    ``n_visible = int(N·(1 − mask_ratio))``, ``n_seed = int(n_visible·seed_ratio)``,
    ``n_target = int(N·rec_ratio)``; for N = 196, m = 0.85, r = 0.25: 29, 14, 49.

    Args:
        num_patches: ``N``.
        mask_ratio: ``m``, fraction of patches hidden from the encoder, in (0, 1).
        rec_ratio: ``r``, fraction of all patches reconstructed, in (0, m].
        seed_ratio: fraction of the visible tokens chosen as seeds, in (0, 1].

    Returns:
        The :class:`TokenBudget`.

    Raises:
        ValueError: on ratios out of range or budgets that leave nothing to select.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    if not 0.0 < rec_ratio <= mask_ratio:
        raise ValueError(f"rec_ratio must be in (0, mask_ratio={mask_ratio}], got {rec_ratio}")
    if not 0.0 < seed_ratio <= 1.0:
        raise ValueError(f"seed_ratio must be in (0, 1], got {seed_ratio}")
    n_vis = int(num_patches * (1 - mask_ratio))
    n_seed = max(1, int(n_vis * seed_ratio))
    n_rec = int(num_patches * rec_ratio)
    if n_vis < 1 or n_rec < 1:
        raise ValueError(
            f"{num_patches} patches with mask_ratio={mask_ratio}, rec_ratio={rec_ratio} leave "
            f"{n_vis} visible and {n_rec} target tokens; use more patches or other ratios"
        )
    return TokenBudget(num_patches, n_vis, n_seed, n_rec)


def select_by_score(
    scores: torch.Tensor,
    k: int,
    mode: str = "topk",
    temperature: float = 1.0,
    exclude: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Choose ``k`` tokens per image by score.

    Args:
        scores: ``(B, N)`` float scores, higher = richer.
        k: tokens to choose.
        mode: ``topk`` (the ``k`` highest) or ``sample`` (``k`` draws without replacement
            from ``softmax(z / temperature)``, ``z`` the scores standardised per image, via
            the Gumbel-top-k trick; a constant score gives uniform sampling).
        temperature: softmax temperature for ``sample``.
        exclude: optional ``(B, N)`` bool, True for tokens that may not be chosen.
        generator: RNG for ``sample``, on the scores' device (when ``noise`` is None).
        noise: ``(B, N)`` float32 uniform draws in [0, 1) for ``sample``, drawn beforehand
            (what a compiled step receives: no generator inside the graph).

    Returns:
        ``(B, k)`` int64 indices, distinct per row, never excluded ones.

    Raises:
        ValueError: on an unknown mode or if ``k`` exceeds ``N``.
    """
    key = scores.float()
    if mode == "sample":
        std = key.std(dim=1, keepdim=True)
        z = (key - key.mean(dim=1, keepdim=True)) / torch.where(std > 1e-6, std, torch.ones_like(std))
        u = torch.rand(key.shape, generator=generator, device=key.device) if noise is None else noise
        u = u.clamp(1e-12, 1.0 - 1e-7)
        key = z / temperature - torch.log(-torch.log(u))
    elif mode != "topk":
        raise ValueError(f"unknown selection mode {mode!r}; expected 'topk' or 'sample'")
    if k > key.shape[1]:
        raise ValueError(f"cannot select {k} of {key.shape[1]} tokens")
    if exclude is not None:
        # Callers guarantee k eligible tokens (see token_budget); checking here would need a
        # device-to-host sync every step.
        key = key.masked_fill(exclude, float("-inf"))
    return key.topk(k, dim=1).indices


@dataclass(frozen=True)
class PSTSMix:
    """Shares of the tokens added by one PSTS step that are near, far and random (sum 1)."""

    stage: int
    near: float
    far: float
    random: float


def psts_mix(progress: float, boundaries: tuple[float, float, float, float] = (0.35, 0.375, 0.725, 0.75)) -> PSTSMix:
    """PSTS curriculum at training progress ``t`` (SelectiveMAE, arXiv 2406.11933, §3.3).

    Stage 1 ``t < b0``: near (most similar to the selected set, easy); stage 2
    ``b0 ≤ t < b1``: near→far, far share rising linearly 0→1; stage 3 ``b1 ≤ t < b2``: far
    (complementary); stage 4 ``b2 ≤ t < b3``: far→random, random share rising 0→1; stage 5
    ``t ≥ b3``: random. The released code's epochs 280/300/580/600 of 800 are the default
    fractions.

    Args:
        progress: fraction of the run done, in [0, 1].
        boundaries: increasing stage boundaries as fractions of the run.

    Returns:
        The stage number (1–5) and the three shares.

    Raises:
        ValueError: if the boundaries are not non-decreasing within [0, 1].
    """
    b0, b1, b2, b3 = boundaries
    if not 0.0 <= b0 <= b1 <= b2 <= b3 <= 1.0:
        raise ValueError(f"psts_boundaries must be non-decreasing in [0, 1], got {boundaries}")
    t = float(progress)
    if t < b0:
        return PSTSMix(1, 1.0, 0.0, 0.0)
    if t < b1:
        a = (t - b0) / (b1 - b0)
        return PSTSMix(2, 1.0 - a, a, 0.0)
    if t < b2:
        return PSTSMix(3, 0.0, 1.0, 0.0)
    if t < b3:
        a = (t - b2) / (b3 - b2)
        return PSTSMix(4, 0.0, 1.0 - a, a)
    return PSTSMix(5, 0.0, 0.0, 1.0)


def _split_count(k: int, mix: PSTSMix) -> tuple[int, int, int]:
    n_near = round(k * mix.near)
    n_far = min(k - n_near, round(k * mix.far))
    return n_near, n_far, k - n_near - n_far


def psts_step_sizes(n_add: int, num_steps: int) -> list[int]:
    """Tokens PSTS adds at each of its steps: near-equal, the larger steps last.

    The released SelectiveMAE code adds the ``n_visible − n_seed`` tokens of the default budget
    in two sub-steps of 7 then 8 (the first takes the floor of half); this is that rule for any
    number of steps.

    Args:
        n_add: tokens to add, >= 0.
        num_steps: steps, >= 1.

    Returns:
        ``num_steps`` counts summing to ``n_add``, non-decreasing.

    Raises:
        ValueError: if ``num_steps < 1`` or ``n_add < 0``.
    """
    if num_steps < 1 or n_add < 0:
        raise ValueError(f"psts_steps must be >= 1 and the tokens to add >= 0, got {num_steps}, {n_add}")
    extra = n_add % num_steps
    return [n_add // num_steps + (1 if i >= num_steps - extra else 0) for i in range(num_steps)]


def psts_counts(
    n_add: int,
    progress: float,
    boundaries: tuple[float, float, float, float] = (0.35, 0.375, 0.725, 0.75),
    num_steps: int = 2,
) -> list[tuple[int, int, int]]:
    """Near, far and random token counts of each PSTS step at training progress ``t``.

    Each step's size is from :func:`psts_step_sizes`, split by the shares of :func:`psts_mix`
    (rounded: near first, then far, random takes the rest).

    Args:
        n_add: tokens PSTS adds, ``n_visible − n_seed``.
        progress: training progress ``t`` in [0, 1].
        boundaries: stage boundaries, see :func:`psts_mix`.
        num_steps: selection steps.

    Returns:
        ``num_steps`` triples ``(n_near, n_far, n_random)``, each summing to its step's size.
    """
    mix = psts_mix(progress, boundaries)
    return [_split_count(k, mix) for k in psts_step_sizes(n_add, num_steps)]


def _descending_ranks(key: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` → the rank of every entry when its row is sorted in descending order (0: largest)."""
    order = key.argsort(dim=1, descending=True, stable=True)
    ranks = torch.arange(key.shape[1], device=key.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, ranks)


@torch.no_grad()
def psts_select(
    embeddings: torch.Tensor,
    seed_ids: torch.Tensor,
    n_visible: int,
    progress: float,
    boundaries: tuple[float, float, float, float] = (0.35, 0.375, 0.725, 0.75),
    num_steps: int = 2,
    generator: torch.Generator | None = None,
    *,
    counts: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Progressive Semantic Token Selection (SelectiveMAE, arXiv 2406.11933, §3.3, Alg. 1).

    Starting from the seeds ``S``, adds ``n_visible − n_seed`` tokens in ``num_steps``
    near-equal steps, the larger ones last (:func:`psts_step_sizes`: 15 tokens in 2 steps are
    7 then 8, the released code's order). In each step every unselected token ``u`` gets
    ``sim(u) = max_{s∈S} cos(e_u, e_s)``; by the stage of :func:`psts_mix` the step takes
    the most similar ("near"), then the least similar ("far") of the rest, then uniformly
    random ones of the rest; the chosen tokens join ``S`` before the next step.

    The whole batch is handled at once with shapes that do not depend on the stage: the
    shares enter as a tensor of counts compared with ranks (no Python branch on the stage and
    no device-to-host copy), and the random keys come drawn beforehand, so the function
    compiles to one graph (``torch.compile(fullgraph=True)``) that serves every stage.

    Args:
        embeddings: ``(B, N, D)`` patch embeddings plus position embeddings (no gradient).
        seed_ids: ``(B, n_seed)`` int64 seed indices.
        n_visible: total visible tokens wanted, ``≥ n_seed``.
        progress: training progress ``t`` in [0, 1] (ignored when ``counts`` is given).
        boundaries: stage boundaries, see :func:`psts_mix`.
        num_steps: selection steps (2 in the paper).
        generator: RNG for the random share, on the embeddings' device (when ``noise`` is None).
        counts: ``(num_steps, 3)`` int64 near/far/random counts per step
            (:func:`psts_counts`), on the embeddings' device; None: from ``progress``.
        noise: ``(num_steps, B, N)`` float32 uniform keys of the random share; None: drawn
            from ``generator``.

    Returns:
        ``(B, n_visible − n_seed)`` int64 indices of the added tokens, in the order chosen
        (each step's near tokens by decreasing similarity, then its far ones by increasing
        similarity, then its random ones), disjoint from the seeds.

    Raises:
        ValueError: if ``n_visible`` is smaller than the number of seeds or exceeds ``N``.
    """
    b, n, _ = embeddings.shape
    n_seed = seed_ids.shape[1]
    n_add = n_visible - n_seed
    if n_add < 0 or n_visible > n:
        raise ValueError(f"n_visible={n_visible} must be in [n_seed={n_seed}, N={n}]")
    if n_add == 0:
        return torch.empty(b, 0, dtype=torch.long, device=embeddings.device)
    per_step = psts_step_sizes(n_add, num_steps)
    if counts is None:
        counts = torch.tensor(psts_counts(n_add, progress, boundaries, num_steps), device=embeddings.device)
    if noise is None:
        noise = torch.rand(num_steps, b, n, generator=generator, device=embeddings.device)
    e = F.normalize(embeddings.float(), dim=-1)
    selected = torch.zeros(b, n, dtype=torch.bool, device=e.device)
    selected.scatter_(1, seed_ids, True)
    # sim(u) = max over the selected set; kept as a running maximum as the set grows.
    sim = torch.einsum("bnd,bkd->bnk", e, gather_tokens(e, seed_ids)).amax(dim=2)
    added: list[torch.Tensor] = []
    for step, k in enumerate(per_step):
        if k == 0:
            continue
        n_near, n_far, n_rand = counts[step, 0], counts[step, 1], counts[step, 2]
        # Each share takes the best-ranked tokens of its key among those not yet chosen;
        # chosen ones rank last (-inf), and the budget leaves enough unchosen ones.
        r_near = _descending_ranks(sim.masked_fill(selected, float("-inf")))
        take_near = r_near < n_near
        taken = selected | take_near
        r_far = _descending_ranks((-sim).masked_fill(taken, float("-inf")))
        take_far = r_far < n_far
        taken = taken | take_far
        r_rand = _descending_ranks(noise[step].float().masked_fill(taken, float("-inf")))
        take_rand = r_rand < n_rand
        selected = taken | take_rand
        # exactly k tokens are taken; order them near, far, random, each by its rank
        order = torch.where(
            take_near,
            3 * n - r_near,
            torch.where(take_far, 2 * n - r_far, torch.where(take_rand, n - r_rand, -1)),
        )
        ids = order.topk(k, dim=1).indices
        added.append(ids)
        sim = torch.maximum(sim, torch.einsum("bnd,bkd->bnk", e, gather_tokens(e, ids)).amax(dim=2))
    return torch.cat(added, dim=1)


def select_targets(
    scores: torch.Tensor,
    visible_ids: torch.Tensor,
    n_target: int,
    mode: str = "topk",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Partial reconstruction targets among the non-visible patches (SelectiveMAE §3.2).

    Args:
        scores: ``(B, N)`` richness scores.
        visible_ids: ``(B, n_visible)`` int64 encoder tokens, never targets.
        n_target: ``int(N·rec_ratio)``.
        mode: ``topk`` (paper) or ``sample`` (released code), see :func:`select_by_score`.
        temperature: softmax temperature for ``sample``.
        generator: RNG for ``sample`` (when ``noise`` is None).
        noise: ``(B, N)`` uniform draws for ``sample``, drawn beforehand.

    Returns:
        ``(B, n_target)`` int64 indices, disjoint from ``visible_ids``.
    """
    exclude = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    exclude.scatter_(1, visible_ids, True)
    return select_by_score(scores, n_target, mode, temperature, exclude=exclude, generator=generator, noise=noise)
