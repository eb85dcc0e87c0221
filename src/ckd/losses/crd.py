"""CRD: Tian, Krishnan and Isola, "Contrastive Representation Distillation", ICLR 2020.

Student and teacher embeddings (each through a linear head of the method to ``D`` = 128
dimensions, L2-normalised) are contrasted with two memory banks over the whole training set:
the student embedding against the teacher bank, and the teacher embedding against the student
bank. For sample ``i`` with ``K`` negatives ``j_1..j_K``, the score of bank row ``r`` is
``exp(<bank_r, v_i> / tau) / Z`` (``Z`` a normalising constant fixed once from the first batch),
and the NCE loss (the paper's Eq. 18, noise ``P_n = 1/N``) is

``-(1/B) sum_i [ log(p_i,i / (p_i,i + K/N + eps)) + sum_k log((K/N) / (p_i,j_k + K/N + eps)) ]``

summed over the two directions. After each step the bank rows of the batch move towards the
new embeddings with momentum and are re-normalised. Definitions and constants (``eps = 1e-7``,
``Z`` from the mean score times ``N``) as in the reference code: RepDistiller
``crd/criterion.py`` and ``crd/memory.py``, mdistiller ``mdistiller/distillers/CRD.py``.

All functions compute in float32 whatever the input dtype (float64 inputs in float64; autocast
is switched off inside), read the banks without gradient, and raise a one-line ValueError for
inputs of the wrong shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ckd.losses._checks import full_precision, wide

NCE_EPS = 1e-7


def _check(anchor: torch.Tensor, memory: torch.Tensor, sample_index: torch.Tensor) -> None:
    if anchor.dim() != 2 or memory.dim() != 2 or anchor.shape[1] != memory.shape[1]:
        raise ValueError(
            f"embedding must be [B, D] and memory [N, D]; got {tuple(anchor.shape)} and "
            f"{tuple(memory.shape)}"
        )
    if sample_index.dim() != 2 or sample_index.shape[0] != anchor.shape[0]:
        raise ValueError(
            f"sample_index must be [B, 1+K] = [{anchor.shape[0]}, 1+K]; got shape "
            f"{tuple(sample_index.shape)}"
        )
    if sample_index.shape[1] < 2:
        raise ValueError(
            f"sample_index needs a positive and >= 1 negative; got {sample_index.shape[1]} column"
        )


def crd_scores(
    anchor: torch.Tensor, memory: torch.Tensor, sample_index: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``exp(<memory[sample_index[b, k]], anchor[b]> / tau)``, ``[B, 1+K]`` float32.

    Args:
        anchor: ``[B, D]`` embeddings (any float dtype; keeps its gradient).
        memory: ``[N, D]`` bank; read without gradient.
        sample_index: ``[B, 1+K]`` int64 bank rows, the positive first.
        temperature: tau > 0.
    """
    _check(anchor, memory, sample_index)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    batch, draws = sample_index.shape
    with full_precision(anchor.device):
        a = wide(anchor)
        idx = sample_index.long()
        if memory.shape[0] <= draws * memory.shape[1]:
            # all N similarities [B, N], then the drawn ones: cheaper than gathering B*(1+K)
            # rows. A copy of the bank is kept for the backward, so the caller may update the
            # bank in place before it.
            bank = memory.detach().to(a.dtype, copy=True)
            sims = (a @ bank.t()).gather(1, idx)
        else:
            rows = memory.detach().to(a.dtype).index_select(0, idx.reshape(-1))
            rows = rows.view(batch, draws, -1)
            sims = torch.bmm(rows, a.unsqueeze(2)).squeeze(2)
        return torch.exp(sims / temperature)


def nce_loss(probs: torch.Tensor, num_data: int) -> torch.Tensor:
    """CRD's NCE loss on ``[B, 1+K]`` normalised scores (positive first), noise ``1/num_data``.

    ``-(1/B) sum_b [log(p_b0 / (p_b0 + c + eps)) + sum_k log(c / (p_bk + c + eps))]``,
    ``c = K / num_data``, ``eps = 1e-7``. Float32 scalar.
    """
    if probs.dim() != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be [B, 1+K] with K >= 1; got shape {tuple(probs.shape)}")
    if num_data < 1:
        raise ValueError(f"num_data must be >= 1; got {num_data}")
    with full_precision(probs.device):
        p = wide(probs)
        noise = (p.shape[1] - 1) / num_data
        positive = torch.log(p[:, 0] / (p[:, 0] + noise + NCE_EPS))
        negative = torch.log(noise / (p[:, 1:] + noise + NCE_EPS))
        return -(positive.sum() + negative.sum()) / p.shape[0]


@torch.no_grad()
def crd_normalisers(
    student: torch.Tensor,
    teacher: torch.Tensor,
    memory_student: torch.Tensor,
    memory_teacher: torch.Tensor,
    sample_index: torch.Tensor,
    temperature: float = 0.07,
) -> torch.Tensor:
    """The constants ``Z = N * mean(score)`` of the two directions from one batch, ``[2]``:
    (student vs teacher bank, teacher vs student bank). The reference fixes them on its first
    batch."""
    n = memory_student.shape[0]
    z_s = crd_scores(student, memory_teacher, sample_index, temperature).mean() * n
    z_t = crd_scores(teacher, memory_student, sample_index, temperature).mean() * n
    return torch.stack([z_s, z_t])


def crd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    memory_student: torch.Tensor,
    memory_teacher: torch.Tensor,
    sample_index: torch.Tensor,
    normalisers: torch.Tensor,
    temperature: float = 0.07,
) -> torch.Tensor:
    """CRD's two-way NCE loss for one batch.

    Args:
        student: ``[B, D]`` L2-normalised student embedding (after the method's head).
        teacher: ``[B, D]`` L2-normalised teacher embedding after the method's own head: it keeps
            its gradient (the head learns); the teacher network's feature was detached before.
        memory_student, memory_teacher: ``[N, D]`` banks over the training set; no gradient.
        sample_index: ``[B, 1+K]`` int64 bank rows per sample: its own index, then K negatives.
        normalisers: ``[2]`` constants ``Z`` (see :func:`crd_normalisers`); no gradient.
        temperature: tau > 0.

    Returns:
        A float32 scalar, ``nce(student vs teacher bank) + nce(teacher vs student bank)``.
    """
    if memory_student.shape != memory_teacher.shape:
        raise ValueError(
            f"the two memory banks must have one shape; got {tuple(memory_student.shape)} and "
            f"{tuple(memory_teacher.shape)}"
        )
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher embeddings must have one shape; got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )
    if normalisers.shape != (2,):
        raise ValueError(f"normalisers must be [2]; got shape {tuple(normalisers.shape)}")
    n = memory_student.shape[0]
    z = wide(normalisers.detach())
    p_s = crd_scores(student, memory_teacher, sample_index, temperature) / z[0]
    p_t = crd_scores(teacher, memory_student, sample_index, temperature) / z[1]
    return nce_loss(p_s, n) + nce_loss(p_t, n)


@torch.no_grad()
def crd_memory_update(rows: torch.Tensor, new: torch.Tensor, momentum: float) -> torch.Tensor:
    """Bank rows after one step: ``normalize(momentum * rows + (1 - momentum) * new)``, float32.

    Args:
        rows: ``[B, D]`` the current bank rows of the batch's samples.
        new: ``[B, D]`` the batch's (normalised) embeddings; read without gradient.
        momentum: in ``[0, 1]``.
    """
    if rows.shape != new.shape or rows.dim() != 2:
        raise ValueError(
            f"rows and new must both be [B, D]; got {tuple(rows.shape)} and {tuple(new.shape)}"
        )
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1]; got {momentum}")
    mixed = momentum * wide(rows) + (1 - momentum) * wide(new.detach())
    return F.normalize(mixed, dim=1)
