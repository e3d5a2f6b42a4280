"""SALAD's instance-discrimination and neighbourhood-aggregation losses and progressive anchors.

Two forms of the latent loss (docs/fidelity.md): "replace" (the public reference code: for anchors
−log(p_ii + Σ_{N_k(i)} p_ij) replaces −log p_ii) and "sum" (the paper's Eq. 3: L_ss + L_agg, i.e.
−log p_ii for every film plus −log Σ_{N_k(i)} p_ij for anchors).

Everything is in log space: log p_ij = z_i·m_j/τ − logsumexp_j'(z_i·m_j'/τ) over the full bank,
so the aggregation term −log(p_ii + Σ_{j∈N_k(i)} p_ij) is a logsumexp over {i} ∪ N_k(i) minus the
same normaliser. The bank is chunked so N can be large.
"""

from __future__ import annotations

import torch

CHUNK = 65536


def bank_logits_lse(z: torch.Tensor, bank: torch.Tensor, tau: float) -> torch.Tensor:
    """logsumexp_j(z_i·m_j/τ) over every bank row, computed in chunks of rows: shape [B]."""
    parts = [torch.logsumexp(z @ bank[s : s + CHUNK].t() / tau, dim=1) for s in range(0, bank.shape[0], CHUNK)]
    return torch.logsumexp(torch.stack(parts, dim=1), dim=1)


def discrimination_terms(
    z: torch.Tensor,
    idx: torch.Tensor,
    bank: torch.Tensor,
    tau: float,
    anchor_neighbours: torch.Tensor | None = None,
    is_anchor: torch.Tensor | None = None,
    form: str = "replace",
) -> torch.Tensor:
    """Per-sample loss [B]: −log p_ii for non-anchors; for anchors −log(p_ii + Σ_{N_k(i)} p_ij) ("replace")
    or −log p_ii − log Σ_{N_k(i)} p_ij ("sum", the paper's L_ss + L_agg).

    `anchor_neighbours` is [N, k] (bank indices, self excluded) and `is_anchor` a bool [N] mask; both
    are fixed for a round. `bank` is detached: gradients flow into z only.
    """
    bank = bank.detach()
    lse = bank_logits_lse(z, bank, tau)
    own = (z * bank[idx]).sum(dim=1) / tau
    loss = lse - own
    if anchor_neighbours is None or is_anchor is None:
        return loss
    anchor = is_anchor[idx]
    if not bool(anchor.any()):
        return loss
    nb = anchor_neighbours[idx[anchor]]  # [A, k]
    za = z[anchor]
    nb_logits = torch.einsum("ad,akd->ak", za, bank[nb]) / tau
    loss = loss.clone()
    if form == "sum":
        loss[anchor] = loss[anchor] + lse[anchor] - torch.logsumexp(nb_logits, dim=1)
    else:
        group = torch.cat([own[anchor][:, None], nb_logits], dim=1)
        loss[anchor] = lse[anchor] - torch.logsumexp(group, dim=1)
    return loss


#: The latent-loss forms `discrimination_terms` accepts (TrainConfig.latent_loss).
LATENT_FORMS = ("replace", "sum")


def neighbours_of_round(k: int, growth: int, round_idx: int) -> int:
    """Neighbourhood size of round r ≥ 1: k, plus `growth` per round after the first (growth 0: fixed k)."""
    return k + growth * max(0, round_idx - 1)


@torch.no_grad()
def bank_entropy_and_neighbours(bank: torch.Tensor, tau: float, k: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For every bank row: entropy of its softmax over the other rows (self excluded) and its k nearest rows."""
    n = bank.shape[0]
    entropy = torch.empty(n, dtype=bank.dtype, device=bank.device)
    neighbours = torch.empty(n, k, dtype=torch.int64, device=bank.device)
    for s in range(0, n, chunk):
        sims = bank[s : s + chunk] @ bank.t()
        rows = torch.arange(s, min(s + chunk, n), device=bank.device)
        sims[torch.arange(len(rows)), rows] = -float("inf")
        logp = torch.log_softmax(sims / tau, dim=1)
        entropy[s : s + chunk] = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(dim=1)
        neighbours[s : s + chunk] = sims.topk(k, dim=1).indices
    return entropy, neighbours


def anchor_count(n: int, round_idx: int) -> int:
    """Anchors of round r: min(N, int(N·0.1·r)), the reference code's rule (R = 10 reaches the whole bank)."""
    return min(n, n * round_idx // ANCHOR_ROUNDS_TO_ALL)  # integer arithmetic: 0.1 has no exact float


#: Rounds after which every bank row is an anchor (a tenth of the bank joins per round).
ANCHOR_ROUNDS_TO_ALL = 10


@torch.no_grad()
def select_anchors(rows: torch.Tensor, tau: float, k: int, round_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round r: the anchor_count lowest-entropy rows become anchors; returns (is_anchor [N], neighbours [N,k]).

    `rows` are the training films' embeddings the round starts from (the trainer passes clean,
    un-augmented eval-mode embeddings: the momentum bank mixes augmented views of several epochs).
    """
    n = rows.shape[0]
    entropy, neighbours = bank_entropy_and_neighbours(rows, tau, max(1, min(k, n - 1)))
    count = anchor_count(n, round_idx)
    is_anchor = torch.zeros(n, dtype=torch.bool, device=rows.device)
    if count > 0:
        is_anchor[torch.argsort(entropy)[:count]] = True
    return is_anchor, neighbours
