"""ckd: Contrastive Knowledge Distillation (Zhu et al., IEEE TIP 2025) and its baselines.

Library use::

    from ckd import ckd_loss
    loss = ce + 10.0 * ckd_loss(student_logits, teacher_logits.detach(), temperature=1.0)
"""

from ckd.losses import ckd_loss, dkd_loss, kd_loss

__version__ = "0.1.0"
__all__ = ["ckd_loss", "dkd_loss", "kd_loss", "__version__"]
