"""The layer base class, the registry of layer classes, and the options every layer has.

A layer class is a ``torch.nn.Module`` whose constructor takes a :class:`LayerContext` (name, the specs of its
sources and target) and its own options as keyword arguments: the constructor's signature is the list of options it
accepts, so an unknown option is found before anything is built. It sets ``self.out_spec`` (what it outputs) and
implements ``forward(sources)`` on the :class:`LayerOutput` of its sources. Parameters are created with
:meth:`Layer.add_param`, which applies RETURNN's initializer options.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from returnn.errors import ConfigError
from returnn.torch.network.data import DataSpec, LayerOutput
from returnn.torch.network.initializers import check_initializer, initialize
from returnn.util.suggest import did_you_mean

if TYPE_CHECKING:
    from returnn.torch.network.construction import NetworkBuilder

__all__ = [
    "COMMON_OPTIONS",
    "TF_ONLY_OPTIONS",
    "Layer",
    "LayerContext",
    "get_layer_class",
    "layer_classes",
    "register_layer",
]

# options of every layer, handled by the network around the layer (losses, regularization, input dropout, ...)
COMMON_OPTIONS = {
    "class": "the layer class",
    "from": "the source layer(s): a name or a list (concatenated on the feature axis); default 'data'",
    "loss": "the loss on this layer's output: ce, ctc, mse, l1, binary_ce",
    "target": "the data key of the loss target (default: the config's target, 'classes')",
    "loss_scale": "factor of the loss in the training objective",
    "loss_opts": "options of the loss (e.g. label_smoothing, focal_loss_factor, use_normalized_loss)",
    "loss_only_on_non_search": "accepted (the loss is never computed in search here)",
    "L2": "adds L2 * sum(w**2) over the layer's parameters to the objective",
    "darc1": "adds darc1 * max_f sum_t |x_{t,f}| (before the activation) to the objective",
    "spatial_smoothing": "adds spatial_smoothing * sum of squared differences of neighbouring features",
    "dropout": "dropout rate on the layer's input (training only)",
    "dropout_noise_shape": "axes that share a dropout mask, e.g. {'T': 1} (one mask per sequence)",
    "dropout_on_forward": "apply dropout also in evaluation and forward",
    "is_output_layer": "build this layer even if no loss or output depends on it",
    "trainable": "False: the layer's parameters are not updated",
    "reuse_params": "share the parameters of another layer (its name)",
    "register_as_extern_data": "make this layer's output a data key that losses can use as target",
    "grad_filter": "in training, the gradient of input frames whose gradient norm is above this is zeroed",
    "initial_output": "inside a rec unit: prev:<layer> at the first step (0 by default; a number, 'zeros', 'ones')",
    "out_type": "the output's {'dim': ..., 'sparse': ...}, checked against what the layer computes",
    "n_out": "the output feature dimension",
}

# options of RETURNN's TensorFlow backend that mean nothing here: accepted and logged once
TF_ONLY_OPTIONS = frozenset(
    {
        "param_device",
        "collocate_with",
        "name_scope",
        "custom_param_importer",
        "add_to_summary",
        "control_dependencies_on_output",
        "unroll",
        "max_seq_len",
        "optimize_move_layers_out",
        "use_global_rec_step_offset",
        "only_on_eval",
        "only_on_search",
        "encapsulate",
        "param_variational_noise",
        "need_last",
        "batch_norm",
        "state",
        "cheating",
        "safe_embedding",
    }
)


@dataclasses.dataclass
class LayerContext:
    """What a layer's constructor knows besides its own options.

    :param name: the layer's name (``"base/sub"`` style inside a subnetwork)
    :param sources: the specs of its ``from`` layers, in order
    :param target: the spec of its loss target, if it has one
    :param loss: the name of its loss, if it has one (e.g. ``"ctc"``: the output gets the target dim + 1)
    :param builder: the construction (its ``entries`` are the layers built so far)
    :param source_refs: the references the sources came from (layer names, ``data:KEY``, ...)
    """

    name: str
    sources: list[DataSpec]
    target: DataSpec | None = None
    loss: str | None = None
    builder: NetworkBuilder | None = None
    source_refs: list[str] = dataclasses.field(default_factory=list)

    @property
    def where(self) -> str:
        return f"network: layer {self.name!r}"

    def error(self, message: str) -> ConfigError:
        """A :class:`ConfigError` that names the layer."""
        return ConfigError(f"{self.where}: {message}")

    def single_source(self) -> DataSpec:
        """The spec of the (concatenated) sources; an error for a layer without sources."""
        if not self.sources:
            raise self.error("needs a source: set 'from'")
        return concat_spec(self.sources, self)

    def default_n_out(self, n_out: int | None) -> int:
        """``n_out``, or the target's dim (+1 for ctc's blank) where there is a target; an error otherwise."""
        if n_out is not None:
            return n_out
        if self.target is not None and self.target.dim is not None:
            return self.target.dim + (1 if self.loss == "ctc" else 0)
        raise self.error("needs 'n_out' (or a loss with a target, whose dim it then takes)")


class Layer(torch.nn.Module):
    """Base of the layer classes. Subclasses set ``layer_class`` and register with :func:`register_layer`.

    ``forward`` gets the outputs of the ``from`` layers. Layers with ``concat_sources = True`` (most) get them
    concatenated on the feature axis as one :class:`LayerOutput`; the others get the list.
    """

    layer_class: ClassVar[str] = ""
    concat_sources: ClassVar[bool] = True

    def __init__(self, ctx: LayerContext):
        super().__init__()
        self.ctx_name = ctx.name
        self.out_spec: DataSpec = DataSpec(dim=None)

    def extra_repr(self) -> str:
        return f"{self.layer_class!r}, out={self.out_spec.describe()}"

    def add_param(
        self, name: str, shape: tuple[int, ...], init: Any, *, fan_in: int, fan_out: int, where: str
    ) -> torch.nn.Parameter:
        """Create, initialize and register the parameter ``name`` (named ``<layer>.<name>`` in the state_dict)."""
        param = torch.nn.Parameter(torch.empty(shape))
        initialize(param, init, fan_in=fan_in, fan_out=fan_out, where=where)
        self.register_parameter(name, param)
        return param

    @staticmethod
    def dependencies_from_options(options: dict[str, Any], default_target: str) -> list[str]:
        """Layers (or ``data:KEY``) that this layer reads besides ``from``, named by its options (e.g. ``base``);
        they are built first and passed after the ``from`` sources.

        :param default_target: the data key of a target where the options name none
        """
        return []

    def forward(self, sources):
        raise NotImplementedError


_LAYER_CLASSES: dict[str, type[Layer]] = {}


def register_layer(*names: str) -> Callable[[type[Layer]], type[Layer]]:
    """Class decorator: register a layer class under RETURNN's class name(s)."""

    def register(cls: type[Layer]) -> type[Layer]:
        cls.layer_class = names[0]
        for name in names:
            _LAYER_CLASSES[name] = cls
        return cls

    return register


def layer_classes() -> dict[str, type[Layer]]:
    """The registered layer classes by name."""
    _import_layer_modules()
    return dict(_LAYER_CLASSES)


def get_layer_class(name: Any, where: str) -> type[Layer]:
    """The layer class registered as ``name``; a :class:`ConfigError` with the known classes otherwise."""
    classes = layer_classes()
    if not isinstance(name, str) or name not in classes:
        known = [*classes, "subnetwork"]  # subnetworks are flattened before layers are built
        raise ConfigError(
            f"{where}: layer class {name!r} is not supported yet{did_you_mean(str(name), known)}; "
            f"supported: {', '.join(sorted(known))}"
        )
    return classes[name]


def layer_options(cls: type[Layer]) -> dict[str, inspect.Parameter]:
    """The options a layer class's constructor takes (its keyword parameters after ``ctx``)."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]
    return {p.name: p for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_initializer_options(options: dict[str, Any], where: str) -> None:
    """Check every ``*_init`` option early (before any parameter is made)."""
    for key, value in options.items():
        if key.endswith("_init") and value is not None:
            check_initializer(value, f"{where}: {key}")


def concat_spec(specs: list[DataSpec], ctx: LayerContext) -> DataSpec:
    """The spec of sources concatenated on the feature axis."""
    if len(specs) == 1:
        return specs[0]
    first = specs[0]
    for spec in specs:
        if spec.sparse:
            raise ctx.error(f"cannot concatenate sparse data {spec.describe()} with other sources; embed it first")
        if spec.time != first.time or spec.spatial != first.spatial or not spec.feature_axis:
            raise ctx.error(
                f"sources cannot be concatenated on the feature axis: {', '.join(s.describe() for s in specs)}"
            )
    return first.copy(dim=sum(spec.dim for spec in specs))


def concat_outputs(outputs: list[LayerOutput]) -> LayerOutput:
    """Sources concatenated on the feature axis (lengths of the first)."""
    if len(outputs) == 1:
        return outputs[0]
    spec = outputs[0].spec.copy(dim=sum(o.spec.dim for o in outputs))
    return LayerOutput(torch.cat([o.tensor for o in outputs], dim=-1), outputs[0].lengths, spec)


def _import_layer_modules() -> None:
    from returnn.torch.network.layers import attention, basic, conv, loop, norm, rec, shape  # noqa: F401 (registers)
