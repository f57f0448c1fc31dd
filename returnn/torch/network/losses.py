"""The losses of network layers (``"loss": "ce"`` etc.), with RETURNN's normalization and errors.

Each loss gives, for a batch, the loss summed over the batch (frames; for ``ctc`` sequences), its normalization
count (frames; for ``ctc`` target labels), and where the loss has one an error summed the same way (frame errors for
``ce``, label edit distance of the greedy decoding for ``ctc``). As in RETURNN's TensorFlow backend, the training
objective is the sum times ``loss_scale`` unless ``loss_opts`` sets ``use_normalized_loss``; the reported scores are
normalized.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from returnn.errors import ConfigError, DatasetError
from returnn.torch.network.data import DataSpec, LayerOutput

__all__ = ["LOSSES", "LossSpec", "LossValues", "loss_spec_from_options", "edit_distance"]

LOSSES = ("ce", "ctc", "mse", "l1", "binary_ce")
_LOSS_OPTS = {
    "ce": ("label_smoothing", "focal_loss_factor", "use_normalized_loss", "scale"),
    "ctc": ("use_normalized_loss", "scale", "ctc_opts", "focal_loss_factor"),
    "mse": ("use_normalized_loss", "scale"),
    "l1": ("use_normalized_loss", "scale"),
    "binary_ce": ("use_normalized_loss", "scale"),
}


@dataclasses.dataclass(frozen=True)
class LossValues:
    """A loss on one batch: sums and the count they are normalized by."""

    loss: torch.Tensor
    norm: torch.Tensor
    error: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """The loss of one layer.

    :param layer: the layer's name
    :param kind: one of :data:`LOSSES`
    :param target: the data key of the target (``layer:NAME`` for a layer's output)
    :param scale: ``loss_scale`` (also ``loss_opts["scale"]``)
    :param normalized: ``use_normalized_loss``: the objective uses the normalized loss
    :param options: the remaining ``loss_opts``
    :param activation: how the layer's output relates to probabilities: "softmax", "log_softmax", "sigmoid" or None
    """

    layer: str
    kind: str
    target: str
    scale: float = 1.0
    normalized: bool = False
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    activation: str | None = None

    def compute(self, output: LayerOutput, target: LayerOutput) -> LossValues:
        """The loss of ``output`` against ``target`` on a batch."""
        return _COMPUTE[self.kind](self, output, target)


def loss_spec_from_options(
    layer: str, common: dict[str, Any], out_spec: DataSpec, target_spec: DataSpec | None, target_key: str | None
) -> LossSpec:
    """The loss of a layer from its options (``loss``, ``loss_scale``, ``loss_opts``), checked."""
    where = f"network: layer {layer!r}"
    kind = common["loss"]
    if kind not in LOSSES:
        raise ConfigError(f"{where}: loss {kind!r} is not supported; choose one of: {', '.join(LOSSES)}")
    if target_spec is None or target_key is None:
        raise ConfigError(f"{where}: loss {kind!r} needs a target: set 'target' (a data key)")
    opts = dict(common.get("loss_opts") or {})
    unknown = set(opts) - set(_LOSS_OPTS[kind])
    if unknown:
        raise ConfigError(
            f"{where}: loss_opts {sorted(unknown)} are not known for loss {kind!r}; "
            f"known: {', '.join(_LOSS_OPTS[kind])}"
        )
    scale = float(common.get("loss_scale", 1.0)) * float(opts.pop("scale", 1.0))
    normalized = bool(opts.pop("use_normalized_loss", False))
    if kind in ("ce", "ctc"):
        if not target_spec.sparse:
            raise ConfigError(f"{where}: loss {kind!r} needs sparse targets (class indices); {target_key!r} is dense")
        expected = target_spec.dim + (1 if kind == "ctc" else 0)
        if out_spec.dim != expected:
            raise ConfigError(
                f"{where}: loss {kind!r} with target {target_key!r} (dim {target_spec.dim}) needs {expected} output "
                f"classes{' (the last is the blank)' if kind == 'ctc' else ''}, but the layer outputs "
                f"{out_spec.describe()}; set n_out = {expected}"
            )
        if kind == "ce" and out_spec.time != target_spec.time:
            raise ConfigError(
                f"{where}: output {out_spec.describe()} and target {target_spec.describe()} differ in time"
            )
    elif target_spec.feature_axis and out_spec.dim != target_spec.dim:
        raise ConfigError(
            f"{where}: loss {kind!r}: output dim {out_spec.dim} differs from the dim {target_spec.dim} of target "
            f"{target_key!r}"
        )
    return LossSpec(layer=layer, kind=kind, target=target_key, scale=scale, normalized=normalized, options=opts)


def _log_probs(spec: LossSpec, output: LayerOutput, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Log probabilities of the layer's output (of the frames in ``mask``, if given), from the logits where the layer
    has a softmax."""

    def frames(x: torch.Tensor) -> torch.Tensor:
        return x if mask is None else x[mask]

    if spec.activation == "softmax" and output.pre_activation is not None:
        return torch.log_softmax(frames(output.pre_activation).float(), dim=-1)
    if spec.activation == "log_softmax":
        return frames(output.tensor).float()
    return torch.log(frames(output.tensor).float().clamp(min=1e-30))


def _frame_mask(output: LayerOutput, target: LayerOutput, spec: LossSpec) -> torch.Tensor:
    if target.lengths is None:
        return torch.ones(output.tensor.shape[:1], dtype=torch.bool, device=output.tensor.device)
    if output.tensor.shape[1] != target.tensor.shape[1] or not torch.equal(output.lengths, target.lengths):
        raise DatasetError(
            f"network: layer {spec.layer!r}: the output's sequence lengths differ from those of the target "
            f"{spec.target!r} (output frames {output.tensor.shape[1]}, target frames {target.tensor.shape[1]}); "
            "frame-wise losses need the same lengths"
        )
    return target.mask()


def _ce(spec: LossSpec, output: LayerOutput, target: LayerOutput) -> LossValues:
    mask = _frame_mask(output, target, spec)
    log_probs = _log_probs(spec, output, mask)  # [N, C]
    labels = target.tensor[mask].long()
    smoothing = float(spec.options.get("label_smoothing", 0.0))
    nll = -log_probs.gather(-1, labels[:, None])[:, 0]
    if smoothing:
        nll = (1.0 - smoothing) * nll - smoothing * log_probs.mean(dim=-1)
    focal = float(spec.options.get("focal_loss_factor", 0.0))
    if focal:
        prob = log_probs.gather(-1, labels[:, None])[:, 0].exp()
        nll = nll * (1.0 - prob).pow(focal)
    errors = (log_probs.argmax(dim=-1) != labels).sum()
    norm = mask.sum()
    return LossValues(nll.sum(), norm, errors)


def _ctc(spec: LossSpec, output: LayerOutput, target: LayerOutput) -> LossValues:
    log_probs = _log_probs(spec, output)  # [B, T, C+1]
    blank = log_probs.shape[-1] - 1
    target_lengths = target.lengths
    loss = F.ctc_loss(
        log_probs.transpose(0, 1), target.tensor.long(), output.lengths, target_lengths, blank=blank, reduction="sum"
    )
    errors = _greedy_ctc_errors(log_probs.detach(), output.lengths, target.tensor, target_lengths, blank)
    return LossValues(loss, target_lengths.sum(), errors)


def _greedy_ctc_errors(
    log_probs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor, blank: int
) -> torch.Tensor:
    """Σ edit distance between the greedy CTC decoding and the target over the batch."""
    best = log_probs.argmax(dim=-1).cpu().tolist()
    lengths, target_lengths, targets = lengths.tolist(), target_lengths.tolist(), targets.cpu().tolist()
    total = 0
    for b, frames in enumerate(best):
        hyp, previous = [], None
        for label in frames[: lengths[b]]:
            if label != previous and label != blank:
                hyp.append(label)
            previous = label
        total += edit_distance(hyp, targets[b][: target_lengths[b]])
    return torch.tensor(total, device=log_probs.device)


def edit_distance(a: list[Any], b: list[Any]) -> int:
    """The Levenshtein distance of two sequences."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _dense_target(output: LayerOutput, target: LayerOutput) -> torch.Tensor:
    if target.spec.sparse:
        return F.one_hot(target.tensor.long(), output.tensor.shape[-1]).to(output.tensor.dtype)
    return target.tensor.to(output.tensor.dtype)


def _masked_sum(values: torch.Tensor, output: LayerOutput, target: LayerOutput, spec: LossSpec) -> LossValues:
    mask = _frame_mask(output, target, spec)
    return LossValues(values[mask].sum(), mask.sum())


def _mse(spec: LossSpec, output: LayerOutput, target: LayerOutput) -> LossValues:
    return _masked_sum((output.tensor.float() - _dense_target(output, target).float()) ** 2, output, target, spec)


def _l1(spec: LossSpec, output: LayerOutput, target: LayerOutput) -> LossValues:
    return _masked_sum((output.tensor.float() - _dense_target(output, target).float()).abs(), output, target, spec)


def _binary_ce(spec: LossSpec, output: LayerOutput, target: LayerOutput) -> LossValues:
    labels = _dense_target(output, target).float()
    if spec.activation == "sigmoid" and output.pre_activation is not None:
        values = F.binary_cross_entropy_with_logits(output.pre_activation.float(), labels, reduction="none")
    else:
        values = F.binary_cross_entropy(output.tensor.float().clamp(1e-7, 1 - 1e-7), labels, reduction="none")
    return _masked_sum(values, output, target, spec)


_COMPUTE = {"ce": _ce, "ctc": _ctc, "mse": _mse, "l1": _l1, "binary_ce": _binary_ce}
