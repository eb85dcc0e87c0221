"""Feature- and relation-based distillation losses: FitNet, AT, NST, SP, KDSVD, PKT and RKD.

Every function is pure: it computes in float32 whatever the input dtype (float64 inputs in
float64; autocast is switched off inside), never sends a gradient into the teacher's tensors,
and raises a one-line ValueError for inputs of the wrong shape. Feature maps are
``[B, C, H, W]`` (student and teacher may differ in channels; where a loss compares maps
position by position, the larger map is average-pooled to the smaller size first, as the
reference code base does); embeddings are ``[B, D]`` (``D`` may differ between student and
teacher).

The definitions follow the papers and, where the papers leave a choice open (normalisations,
means or sums, constants), the reference implementations that the KD literature's CIFAR numbers
come from: mdistiller (megvii-research, ``mdistiller/distillers/``) and RepDistiller
(HobbitLong, ``distiller_zoo/``). Deviations are named in each docstring.

Why over 400 lines: seven pure loss functions of 30 to 60 lines each (with their shape checks), the
family the feature methods draw on; each is a function, not a module, as in :mod:`ckd.losses`' other
files.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ckd.losses._checks import full_precision, wide

Maps = torch.Tensor | Sequence[torch.Tensor]

KDSVD_VECTORS = ("width", "channel")


# ----------------------------------------------------------------------------- helpers


def _student(x: torch.Tensor) -> torch.Tensor:
    return wide(x)


def _teacher(x: torch.Tensor) -> torch.Tensor:
    return wide(x.detach())


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _as_list(maps: Maps, name: str) -> list[torch.Tensor]:
    if isinstance(maps, torch.Tensor):
        return [maps]
    maps = list(maps)
    if not maps or not all(isinstance(m, torch.Tensor) for m in maps):
        raise ValueError(f"{name} must be a tensor or a non-empty sequence of tensors")
    return maps


def _check_maps(student: Maps, teacher: Maps) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Both sides: equally many ``[B, C, H, W]`` maps with one batch size."""
    s, t = _as_list(student, "student_feats"), _as_list(teacher, "teacher_feats")
    if len(s) != len(t):
        raise ValueError(
            f"student and teacher need as many feature maps; got {len(s)} and {len(t)}"
        )
    batch = s[0].shape[0] if s[0].dim() > 0 else None
    for side, maps in (("student", s), ("teacher", t)):
        for i, m in enumerate(maps):
            if m.dim() != 4:
                raise ValueError(f"{side}_feats[{i}] must be [B, C, H, W]; got shape {_shape(m)}")
            if m.shape[0] != batch:
                raise ValueError(f"{side}_feats[{i}] has batch size {m.shape[0]}; expected {batch}")
    return s, t


def _check_batch_pair(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    """Two tensors ``[B, ...]`` with the same batch size (``what`` names the expected shape)."""
    for side, x in (("student", student), ("teacher", teacher)):
        if x.dim() < 2:
            raise ValueError(f"{side} input must be {what}; got shape {_shape(x)}")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student and teacher must have the same batch size; got shapes "
            f"{_shape(student)} and {_shape(teacher)}"
        )


def _check_embeddings(student: torch.Tensor, teacher: torch.Tensor) -> None:
    for side, x in (("student", student), ("teacher", teacher)):
        if x.dim() != 2:
            raise ValueError(f"{side} embedding must be [B, D]; got shape {_shape(x)}")
    _check_batch_pair(student, teacher, "[B, D]")


def match_spatial(fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool (adaptively) whichever map is larger down to the other's ``H x W``."""
    h, w = min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3])
    if fs.shape[2:] != (h, w):
        fs = F.adaptive_avg_pool2d(fs, (h, w))
    if ft.shape[2:] != (h, w):
        ft = F.adaptive_avg_pool2d(ft, (h, w))
    return fs, ft


def paired_stages(
    student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], skip: int = 1
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The last ``min(len(student), len(teacher)) - skip`` stages of each side, aligned from the
    deepest one. With as many stages on both sides this is ``feats[skip:]`` of each (the
    reference's ``feats[1:]``: every stage but the stem)."""
    count = min(len(student_feats), len(teacher_feats)) - skip
    if count < 1:
        raise ValueError(
            f"need more than {skip} stage(s) on both sides; got {len(student_feats)} and "
            f"{len(teacher_feats)}"
        )
    return list(student_feats[-count:]), list(teacher_feats[-count:])


# ----------------------------------------------------------------------------- FitNet
def fitnet_loss(student_hint: torch.Tensor, teacher_hint: torch.Tensor) -> torch.Tensor:
    """FitNet hint loss (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015):
    the mean squared error between the regressed student hint and the teacher's hint layer,
    averaged over every element (``F.mse_loss``, as in mdistiller/RepDistiller).

    Args:
        student_hint: ``[B, C, H, W]`` (or any shape), the student's hint after the learnable
            regressor that maps it to the teacher's shape; any float dtype.
        teacher_hint: same shape; detached.

    Returns:
        A float32 scalar.
    """
    if student_hint.shape != teacher_hint.shape:
        raise ValueError(
            f"student hint (after the regressor) and teacher hint must have the same shape; "
            f"got {_shape(student_hint)} and {_shape(teacher_hint)}"
        )
    with full_precision(student_hint.device):
        return F.mse_loss(_student(student_hint), _teacher(teacher_hint))


# ----------------------------------------------------------------------------- AT
def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H*W]``: the channel mean of ``|f|^p``, L2-normalised per sample."""
    return F.normalize(feat.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(student_feats: Maps, teacher_feats: Maps, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR
    2017): for each stage pair, ``mean_{b, hw} (a_s - a_t)^2`` with ``a = normalize(mean_c
    |f|^p)`` (a spatial attention map of unit L2 norm per sample), summed over the stages.

    The reference code uses ``f.pow(p)`` (the same for the default p = 2) and pools the larger
    feature map to the smaller size before taking the attention map, as done here.

    Args:
        student_feats: one ``[B, C_s, H, W]`` map or a sequence of them (float, any dtype).
        teacher_feats: as many ``[B, C_t, H', W']`` maps; detached. Channels may differ.
        p: the exponent, > 0.

    Returns:
        A float32 scalar.
    """
    if not p > 0:
        raise ValueError(f"p must be > 0; got {p}")
    s, t = _check_maps(student_feats, teacher_feats)
    with full_precision(s[0].device):
        total = s[0].new_zeros((), dtype=torch.float32)
        for fs, ft in zip(s, t, strict=True):
            fs, ft = match_spatial(_student(fs), _teacher(ft))
            total = total + (attention_map(fs, p) - attention_map(ft, p)).pow(2).mean()
        return total


# ----------------------------------------------------------------------------- NST
def nst_loss(student_feats: Maps, teacher_feats: Maps) -> torch.Tensor:
    """Neuron selectivity transfer (Huang & Wang, "Like What You Like: Knowledge Distill via
    Neuron Selectivity Transfer", 2017) with the polynomial kernel ``k(x, y) = (x . y)^2``
    (d = 2, c = 0).

    Each channel's map, flattened over ``H*W`` and L2-normalised, is one sample of a
    distribution; per stage and sample, the squared MMD between the student's and teacher's
    channel sets is ``mean k(t, t') + mean k(s, s') - 2 mean k(s, t)`` (means over all channel
    pairs). It is averaged over the batch and summed over the stages. The larger map is pooled to
    the smaller size first (as in the reference code).

    Args:
        student_feats: one ``[B, C_s, H, W]`` map or a sequence of them.
        teacher_feats: as many ``[B, C_t, H', W']`` maps; detached. Channels may differ.

    Returns:
        A float32 scalar (>= 0 up to rounding).
    """
    s, t = _check_maps(student_feats, teacher_feats)
    with full_precision(s[0].device):
        total = s[0].new_zeros((), dtype=torch.float32)
        for fs, ft in zip(s, t, strict=True):
            fs, ft = match_spatial(_student(fs), _teacher(ft))
            fs = F.normalize(fs.flatten(2), dim=2)  # [B, C_s, HW]
            ft = F.normalize(ft.flatten(2), dim=2)  # [B, C_t, HW]
            k_tt = (ft @ ft.transpose(1, 2)).pow(2).mean()
            k_ss = (fs @ fs.transpose(1, 2)).pow(2).mean()
            k_st = (fs @ ft.transpose(1, 2)).pow(2).mean()
            total = total + k_tt + k_ss - 2 * k_st
        return total


# ----------------------------------------------------------------------------- SP
def sp_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): ``||G_t - G_s||_F^2 / B^2`` where
    ``G = normalize_rows(f f^T)`` is the ``[B, B]`` similarity of the batch's flattened
    activations, each row L2-normalised.

    Args:
        student_feat: ``[B, ...]`` (e.g. a ``[B, C, H, W]`` map), flattened per sample.
        teacher_feat: ``[B, ...]``; detached. Sizes after the batch dimension may differ.

    Returns:
        A float32 scalar.
    """
    _check_batch_pair(student_feat, teacher_feat, "[B, ...]")
    with full_precision(student_feat.device):
        fs = _student(student_feat).flatten(1)
        ft = _teacher(teacher_feat).flatten(1)
        g_s = F.normalize(fs @ fs.t(), dim=1)
        g_t = F.normalize(ft @ ft.t(), dim=1)
        return (g_t - g_s).pow(2).sum() / fs.shape[0] ** 2


# ----------------------------------------------------------------------------- KDSVD
def _svd_vectors(feat: torch.Tensor, n: int, vectors: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading ``n`` right singular vectors ``[B, N, n]`` (each L2-normalised) and singular
    values ``[B, n]`` (L2-normalised over the ``n``) of each sample's feature matrix."""
    b, c, h, w = feat.shape
    if vectors == "width":
        x = feat.reshape(b, c * h, w)  # mdistiller's [C*H, W] reading of an NCHW map
    else:
        x = feat.reshape(b, c, h * w).transpose(1, 2)  # [HW, C], the paper's layout
    if x.requires_grad:  # degenerate singular values give non-finite SVD gradients: drop them
        x.register_hook(lambda g: torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0))
    _, sv, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh.transpose(1, 2)[:, :, :n]
    sv = torch.nan_to_num(sv[:, :n])
    v = torch.nan_to_num(v)
    return F.normalize(v, dim=1), F.normalize(sv, dim=1)


def kdsvd_loss(
    student_feats: Maps, teacher_feats: Maps, k: int = 1, vectors: str = "width"
) -> torch.Tensor:
    """KD with singular value decomposition (Lee, Kim & Song, "Self-supervised Knowledge
    Distillation Using Singular Value Decomposition", ECCV 2018), as in the reference code.

    Per stage, each sample's feature matrix is decomposed; the teacher keeps its ``k`` leading
    right singular vectors ``v_t`` ([N, k], unit norm), the student its ``k + 3``, and for each
    teacher vector the student vector of largest ``|cosine|`` is taken, sign-matched. Both are
    scaled by the teacher's leading singular values (normalised to unit norm over the k).
    Between consecutive stages i-1, i the element-wise RBF ``G[a, b, j] = exp(-(v_i[a, j] -
    v_{i-1}[b, j])^2 / 8)`` (``[N_i, N_{i-1}, k]``) is formed on each side and the loss is
    ``sum (G_s - G_t)^2 / B`` summed over the stage pairs (non-finite entries count 0).

    ``vectors`` chooses the matrix that is decomposed:

    - ``"width"`` (default, mdistiller, the reference code base of the CIFAR baselines): the
      NCHW map read as ``[C*H, W]``, so the vectors run over the map's width. Works for any
      channel counts; maps of different size are average-pooled to the smaller one first
      (mdistiller itself fails there).
    - ``"channel"`` (the paper, its TensorFlow code and RepDistiller): ``[H*W, C]``, vectors over
      the channels; student and teacher must have the same channel count at each stage.

    A deterministic sign is fixed for each teacher vector (its largest-magnitude entry is made
    positive): the references keep the SVD routine's arbitrary sign, which changes the value of
    the RBF between stages from one backend to another.

    Args:
        student_feats: a sequence of ``[B, C_s, H, W]`` maps (at least two for a non-zero loss).
        teacher_feats: as many ``[B, C_t, H', W']`` maps; detached.
        k: number of teacher singular vectors, >= 1.
        vectors: ``"width"`` or ``"channel"``.

    Returns:
        A float32 scalar.
    """
    if vectors not in KDSVD_VECTORS:
        raise ValueError(f"vectors must be one of {', '.join(KDSVD_VECTORS)}; got {vectors!r}")
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be an integer >= 1; got {k!r}")
    s, t = _check_maps(student_feats, teacher_feats)
    if vectors == "channel":
        for i, (fs, ft) in enumerate(zip(s, t, strict=True)):
            if fs.shape[1] != ft.shape[1]:
                raise ValueError(
                    f"kdsvd vectors='channel' needs equal channel counts; stage {i} has "
                    f"{fs.shape[1]} (student) and {ft.shape[1]} (teacher)"
                )
    with full_precision(s[0].device):
        total = s[0].new_zeros((), dtype=torch.float32)
        previous: tuple[torch.Tensor, torch.Tensor] | None = None
        for fs, ft in zip(s, t, strict=True):
            fs, ft = match_spatial(_student(fs), _teacher(ft))
            v_t, sv_t = _svd_vectors(ft, k, vectors)  # [B, N, k'], [B, k']
            v_s, _ = _svd_vectors(fs, k + 3, vectors)  # [B, N, k'+3 at most]
            # fixed sign: the largest-magnitude entry of each teacher vector is positive
            peak = v_t.gather(1, v_t.abs().argmax(dim=1, keepdim=True))
            v_t = v_t * torch.where(peak < 0, -1.0, 1.0)
            # align: for each teacher vector, the student vector of largest |cosine|, signed
            cosine = v_s.transpose(1, 2) @ v_t  # [B, n_s, n_t]
            best = cosine.abs() == cosine.abs().amax(dim=1, keepdim=True)
            mask = torch.where(best, torch.sign(cosine), torch.zeros_like(cosine))
            v_s = v_s @ mask  # [B, N, n_t]
            scale = sv_t.unsqueeze(1)  # [B, 1, n_t]
            v_s, v_t = v_s * scale, v_t * scale
            if previous is not None:
                vs_prev, vt_prev = previous
                g_s = torch.exp(-(v_s.unsqueeze(2) - vs_prev.unsqueeze(1)).pow(2) / 8)
                g_t = torch.exp(-(v_t.unsqueeze(2) - vt_prev.unsqueeze(1)).pow(2) / 8)
                diff = (g_s - g_t).pow(2)
                diff = torch.where(torch.isfinite(diff), diff, torch.zeros_like(diff))
                total = total + diff.sum() / fs.shape[0]
            previous = (v_s, v_t)
        return total


# ----------------------------------------------------------------------------- PKT
def pkt_loss(
    student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, eps: float = 1e-7
) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, "Learning Deep Representations with
    Probabilistic Knowledge Transfer", ECCV 2018) with the cosine-similarity kernel.

    With ``x_i / (||x_i|| + eps)`` the embeddings, ``K_ij = (cos(x_i, x_j) + 1) / 2`` and
    ``P_ij = K_ij / sum_j K_ij`` (conditional probabilities, the diagonal included) on each side,
    the loss is ``mean_{i, j} P^t_ij log((P^t_ij + eps) / (P^s_ij + eps))`` (the reference
    code's mean over all ``B^2`` entries, i.e. the KL divergence per row divided by ``B``).

    Args:
        student_embedding: ``[B, D_s]``.
        teacher_embedding: ``[B, D_t]``; detached.
        eps: > 0.

    Returns:
        A float32 scalar.
    """
    _check_embeddings(student_embedding, teacher_embedding)
    if not eps > 0:
        raise ValueError(f"eps must be > 0; got {eps}")

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        x = x / (x.norm(dim=1, keepdim=True) + eps)
        kernel = (x @ x.t() + 1.0) / 2.0
        return kernel / kernel.sum(dim=1, keepdim=True)

    with full_precision(student_embedding.device):
        p_s = probabilities(_student(student_embedding))
        p_t = probabilities(_teacher(teacher_embedding))
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


# ----------------------------------------------------------------------------- RKD
def _pairwise_distances(x: torch.Tensor, squared: bool, eps: float) -> torch.Tensor:
    """``[B, B]`` Euclidean distances (squared ones with ``squared``), each clamped below at
    ``eps`` before the square root, with a zero diagonal."""
    d = (x.unsqueeze(1) - x.unsqueeze(0)).pow(2).sum(dim=2).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    off_diagonal = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d * off_diagonal


def rkd_distance_loss(
    student_embedding: torch.Tensor,
    teacher_embedding: torch.Tensor,
    squared: bool = False,
    eps: float = 1e-12,
) -> torch.Tensor:
    """RKD distance term (Park et al., "Relational Knowledge Distillation", CVPR 2019): the
    Huber (smooth L1, beta = 1) loss between the ``[B, B]`` pairwise distance matrices of the
    student and teacher embeddings, each divided by the mean of its off-diagonal entries;
    averaged over all ``B^2`` entries (the zero diagonal included, as in the reference code).

    Args:
        student_embedding: ``[B, D_s]``.
        teacher_embedding: ``[B, D_t]``; detached.
        squared: use squared distances (the reference default is False).
        eps: squared distances are clamped below at eps, > 0.

    Returns:
        A float32 scalar; 0 for a batch of one (no pairs).
    """
    _check_embeddings(student_embedding, teacher_embedding)
    if not eps > 0:
        raise ValueError(f"eps must be > 0; got {eps}")
    with full_precision(student_embedding.device):
        s, t = _student(student_embedding), _teacher(teacher_embedding)
        batch = s.shape[0]
        if batch < 2:
            return s.sum() * 0.0
        pairs = batch * (batch - 1)
        d_s = _pairwise_distances(s, squared, eps)
        d_t = _pairwise_distances(t, squared, eps)
        d_s = d_s / (d_s.sum() / pairs)
        d_t = d_t / (d_t.sum() / pairs)
        return F.smooth_l1_loss(d_s, d_t)


def _angles(x: torch.Tensor) -> torch.Tensor:
    """``[B, B, B]``: entry ``(i, j, k)`` is the cosine of the angle at ``x_i`` between
    ``x_j - x_i`` and ``x_k - x_i`` (0 where one of them is the zero vector)."""
    unit = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), dim=2)  # [i, j] = unit(x_j - x_i)
    return unit @ unit.transpose(1, 2)


def rkd_angle_loss(
    student_embedding: torch.Tensor, teacher_embedding: torch.Tensor
) -> torch.Tensor:
    """RKD angle term (Park et al., CVPR 2019): the Huber (smooth L1, beta = 1) loss between the
    ``[B, B, B]`` tensors of cosines of the angles formed by every triplet of embeddings,
    averaged over all ``B^3`` entries (degenerate triplets give 0 on both sides, as in the
    reference code).

    Args:
        student_embedding: ``[B, D_s]``.
        teacher_embedding: ``[B, D_t]``; detached.

    Returns:
        A float32 scalar.
    """
    _check_embeddings(student_embedding, teacher_embedding)
    with full_precision(student_embedding.device):
        a_s = _angles(_student(student_embedding))
        a_t = _angles(_teacher(teacher_embedding))
        return F.smooth_l1_loss(a_s, a_t)


def rkd_loss(
    student_embedding: torch.Tensor,
    teacher_embedding: torch.Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    squared: bool = False,
    eps: float = 1e-12,
) -> torch.Tensor:
    """``distance_weight * rkd_distance_loss + angle_weight * rkd_angle_loss`` (defaults 25 and
    50, the reference code's). Shapes as in those two functions; a float32 scalar."""
    distance = rkd_distance_loss(student_embedding, teacher_embedding, squared, eps)
    angle = rkd_angle_loss(student_embedding, teacher_embedding)
    return distance_weight * distance + angle_weight * angle
