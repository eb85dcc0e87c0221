"""The CKD loss: sample-wise contrastive distillation over the logits of one mini-batch.

Zhu et al., "CKD: Contrastive Knowledge Distillation from A Sample-wise Perspective",
IEEE TIP 2025 (arXiv 2404.14109).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ckd.losses._checks import as_float32, check_pair, check_temperature, in_full_precision

NEGATIVES = ("cross", "student")


@in_full_precision
def ckd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    negatives: str = "cross",
) -> torch.Tensor:
    """InfoNCE between L2-normalised teacher and student logits of one mini-batch.

    With ``t_i = t_i / ||t_i||`` and ``s_j = s_j / ||s_j||`` (L2 over the class dimension) and
    tau = ``temperature``:

    - ``negatives="cross"`` (the released code, default): ``S_ij = t_i . s_j / tau`` is a
      ``[B, B]`` matrix with teacher rows and student columns and the loss is the cross-entropy of
      each row against its diagonal, ``-(1/B) sum_i log(exp(S_ii) / sum_j exp(S_ij))``.
    - ``negatives="student"`` (the paper's text): the positive is ``(t_i, s_i)`` and the
      negatives are the student pairs ``(s_i, s_j), j != i``:
      ``-(1/B) sum_i log(exp(t_i.s_i/tau) / (exp(t_i.s_i/tau) + sum_{j!=i} exp(s_i.s_j/tau)))``.

    Args:
        student_logits: ``[B, C]``, any float dtype; computed in float32.
        teacher_logits: ``[B, C]``; detached, no gradient reaches it.
        temperature: tau > 0.
        negatives: ``"cross"`` or ``"student"``.

    Returns:
        A float32 scalar, the mean over the batch. A batch of one has no negatives and gives 0.
    """
    check_pair(student_logits, teacher_logits)
    check_temperature(temperature)
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {', '.join(NEGATIVES)}; got {negatives!r}")
    s, t = as_float32(student_logits, teacher_logits)
    s = F.normalize(s, dim=1)
    t = F.normalize(t, dim=1)
    batch = s.shape[0]
    if negatives == "cross":
        scores = t @ s.t() / temperature  # [B, B]: teacher rows, student columns
        labels = torch.arange(batch, device=s.device)
        return F.cross_entropy(scores, labels)
    positive = (t * s).sum(dim=1, keepdim=True) / temperature  # [B, 1]
    among_students = s @ s.t() / temperature  # [B, B]
    eye = torch.eye(batch, dtype=torch.bool, device=s.device)
    among_students = among_students.masked_fill(eye, float("-inf"))
    log_denominator = torch.logsumexp(torch.cat([positive, among_students], dim=1), dim=1)
    return (log_denominator - positive.squeeze(1)).mean()
