"""Probabilistic knowledge transfer: ``w_ce * CE + w_pkt * pkt_loss`` on the embeddings."""

from __future__ import annotations

import dataclasses

import torch

from ckd.losses import pkt_loss
from ckd.methods.base import METHODS, Batch, Method, MethodOptions


@dataclasses.dataclass
class PKTOptions(MethodOptions):
    # Defaults: mdistiller mdistiller/engine/cfg.py (PKT.LOSS.CE_WEIGHT 1.0, FEAT_WEIGHT 30000)
    # = RepDistiller scripts/run_cifar_distill.sh (--distill pkt -a 0 -b 30000); eps 1e-7 as in
    # both. Input: the pooled embedding (the classifier's input).
    w_ce: float = 1.0
    w_pkt: float = 30000.0
    eps: float = 1e-7

    def validate(self) -> None:
        super().validate()
        self.require(self.eps > 0, "eps", "> 0")


@METHODS.register("pkt")
class PKT(Method[PKTOptions]):
    Options = PKTOptions
    needs_features = True
    embedding_only = True  # reads the embedding, no stage map
    description = "KL between cosine-kernel conditional probability distributions of embeddings"
    paper = (
        "Passalis & Tefas, Learning Deep Representations with Probabilistic Knowledge "
        "Transfer, ECCV 2018"
    )

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        s, t = b.student.embedding, b.teacher.embedding
        assert s is not None and t is not None  # a feature method's outputs hold embeddings
        loss = pkt_loss(s, t, o.eps)
        return {"pkt": o.w_pkt * loss}
