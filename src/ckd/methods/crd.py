"""CRD: ``w_ce * CE + w_crd * crd_loss`` with memory banks over the whole training set.

The student's and teacher's embeddings (the classifier inputs, ``[B, D_s]`` and ``[B, D_t]``) go
through linear heads of the method to ``feat_dim`` dimensions and are L2-normalised. Two memory
banks, one row per training sample (``b.index``), hold past student and teacher embeddings; each
sample is contrasted with its own row (the positive) and ``nce_k`` rows drawn uniformly from the
other samples (with replacement, torch's RNG, on the batch's device). After the loss the batch's
rows move towards the new embeddings with momentum ``nce_m`` and are re-normalised. The NCE
normalising constants ``Z`` are fixed from the first batch, as in the reference.

Memory: the banks are ``2 x num_train x feat_dim`` float32 buffers (for CIFAR-100's 50,000 training
images and 128 dimensions: 12.8 M floats, 51.2 MB), registered as buffers of the method so they
are checkpointed and resumed exactly with the student; so are the two constants ``Z``.

Everything CRD needs (the sample index, the negatives, the banks) lives here: the trainer and the
data pipeline give every method the sample index and know nothing of CRD. Deviation from the
reference's ``exact`` mode: its data loader draws the negatives among samples of *other classes*
(it knows every label); here they are drawn among all other samples, so about one in
``num_classes`` shares the anchor's class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ckd.losses import crd_loss, crd_memory_update, crd_normalisers
from ckd.losses._checks import wide
from ckd.methods.base import METHODS, Batch, Method, MethodOptions, Setup


@dataclasses.dataclass
class CRDOptions(MethodOptions):
    # Defaults: mdistiller mdistiller/engine/cfg.py (CRD.LOSS.CE_WEIGHT 1.0, FEAT_WEIGHT 0.8,
    # CRD.FEAT.DIM 128, CRD.NCE.K 16384, NCE.TEMPERATURE 0.07, NCE.MOMENTUM 0.5;
    # configs/cifar100/crd.yaml, resnet32x4 -> resnet8x4, keeps them) = RepDistiller
    # train_student.py (--feat_dim 128 --nce_k 16384 --nce_t 0.07 --nce_m 0.5, -r 1 -a 0 -b 0.8).
    # feat_dim: 128 is upstream mdistiller's (and RepDistiller's). The CKD code's cfg.py says
    # CRD.FEAT.DIM 64 with STUDENT_DIM = TEACHER_DIM = 64, which cannot run its own
    # configs/cifar100/crd.yaml (resnet32x4 -> resnet8x4 embeddings are 256-d); 128 is kept.
    w_ce: float = 1.0
    w_crd: float = 0.8
    feat_dim: int = 128  # dimension of the embedding heads and of the memory banks
    nce_k: int = 16384  # negatives drawn per sample
    nce_t: float = 0.07  # temperature
    nce_m: float = 0.5  # momentum of the bank update

    def validate(self) -> None:
        super().validate()
        self.require(self.feat_dim >= 1, "feat_dim", ">= 1")
        self.require(self.nce_k >= 1, "nce_k", ">= 1")
        self.require(self.nce_t > 0, "nce_t", "> 0")
        self.require(0 <= self.nce_m <= 1, "nce_m", "in [0, 1]")


def _fp32(device: torch.device) -> contextlib.AbstractContextManager[None]:
    try:
        return torch.autocast(device.type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


def draw_negatives(index: torch.Tensor, num_data: int, k: int) -> torch.Tensor:
    """``[B, k]`` int64 rows drawn uniformly (with replacement) from ``[0, num_data)`` without
    each sample's own ``index``, with torch's RNG on ``index``'s device."""
    draws = torch.randint(num_data - 1, (index.shape[0], k), device=index.device)
    return draws + (draws >= index.unsqueeze(1)).long()


@METHODS.register("crd")
class CRD(Method[CRDOptions]):
    Options = CRDOptions
    needs_features = True
    embedding_only = True  # reads the embedding, no stage map
    description = "NCE contrast of embeddings against memory banks over the whole training set"
    paper = "Tian et al., Contrastive Representation Distillation, ICLR 2020"

    # buffers (registered in __init__)
    memory_student: torch.Tensor
    memory_teacher: torch.Tensor
    normalisers: torch.Tensor

    def __init__(self, options: CRDOptions, setup: Setup) -> None:
        super().__init__(options, setup)
        s, t = setup.student, setup.teacher
        if s is None or t is None or s.embedding is None or t.embedding is None:
            raise ValueError("crd needs the student's and teacher's embedding sizes in its Setup")
        if setup.num_train < 2:
            raise ValueError(f"crd needs a training set of >= 2 samples; got {setup.num_train}")
        d = options.feat_dim
        self.embed_student = nn.Linear(s.embedding, d)
        self.embed_teacher = nn.Linear(t.embedding, d)
        bound = 1.0 / math.sqrt(d / 3)  # uniform in [-bound, bound], as the reference
        for name in ("memory_student", "memory_teacher"):
            self.register_buffer(name, torch.rand(setup.num_train, d) * (2 * bound) - bound)
        # Z of (student vs teacher bank, teacher vs student bank); negative until the first batch
        self.register_buffer("normalisers", torch.full((2,), -1.0))
        self._normalisers_set = False

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._normalisers_set = False  # re-read the loaded constants on the next batch
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        if b.index is None:
            raise ValueError("crd needs the batch's dataset indices (index)")
        s_emb, t_emb = b.student.embedding, b.teacher.embedding
        assert s_emb is not None and t_emb is not None
        device = s_emb.device
        index = b.index.to(device=device, dtype=torch.long)
        num_data = self.memory_student.shape[0]
        with _fp32(device):
            v_s = F.normalize(self.embed_student(wide(s_emb)), dim=1)
            v_t = F.normalize(self.embed_teacher(wide(t_emb.detach())), dim=1)
        rows = torch.cat([index.unsqueeze(1), draw_negatives(index, num_data, o.nce_k)], dim=1)
        banks = (v_s, v_t, self.memory_student, self.memory_teacher, rows, o.nce_t)
        if not self._normalisers_set:
            if bool((self.normalisers < 0).any()):
                self.normalisers.copy_(crd_normalisers(*banks))
            self._normalisers_set = True
        term = crd_loss(*banks[:5], self.normalisers, o.nce_t)
        with torch.no_grad():  # every process updates its banks with the global batch
            index = b.gather(index)
            for bank, new in ((self.memory_student, v_s), (self.memory_teacher, v_t)):
                new = b.gather(new.detach())
                bank.index_copy_(0, index, crd_memory_update(bank[index], new, o.nce_m))
        return {"crd": o.w_crd * term}
