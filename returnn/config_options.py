"""Which config keys exist: the options that modules declare, and the keys that are known without a declaration.

Each module declares the keys it reads with :func:`declare_options`, next to the code that reads them. The
declarations give each option its default and its documentation; they are the known keys of the unknown-key report
of :class:`returnn.config.Config` ("did you mean ...?"), and the README's config reference is generated from them
(``python -m returnn.tools.config_reference``).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Iterable
from typing import Any

__all__ = [
    "PIPELINE_INJECTED_KEYS",
    "RETURNN_KEYS_NOT_USED",
    "returnn_key_not_used",
    "ConfigOption",
    "closest_known_key",
    "declare_options",
    "declared_options",
]


@dataclasses.dataclass(frozen=True)
class ConfigOption:
    """A config key that the project reads, with its default and meaning."""

    name: str
    default: Any
    doc: str
    section: str


_declared_options: dict[str, ConfigOption] = {}  # the registry: filled when the declaring modules are imported


def declare_options(section: str, options: dict[str, tuple[Any, str]]) -> None:
    """Declare the config keys that a module reads.

    :param section: heading in the config reference, e.g. ``"Training loop"``
    :param options: ``{name: (default, doc)}``
    """
    for name, (default, doc) in options.items():
        existing = _declared_options.get(name)
        option = ConfigOption(name=name, default=default, doc=doc, section=section)
        if existing is not None and existing != option:
            raise RuntimeError(f"config option {name!r} declared twice ({existing.section!r} and {section!r})")
        _declared_options[name] = option


def declared_options() -> dict[str, ConfigOption]:
    """All options declared so far (by the modules imported so far)."""
    return dict(_declared_options)


# Importing these imports every module that declares options.
OPTION_MODULES = (
    "returnn.log",
    "returnn.__main__",
    "returnn.torch.engine",
    "returnn.torch.network.steps",
    "returnn.torch.network.search_task",
    "returnn.tools.torch_export_to_onnx",
)


def import_option_modules() -> dict[str, ConfigOption]:
    """Import every module that declares options, so that all of them are known; returns them all."""
    for name in OPTION_MODULES:
        importlib.import_module(name)
    return declared_options()


def declared_option(name: str) -> ConfigOption | None:
    """The declaration of one option, or None."""
    return _declared_options.get(name)


def closest_known_key(key: str, read_keys: Iterable[str]) -> str | None:
    """The declared or read key that ``key`` is a near miss of (a typo such as ``bach_size``), or None."""
    close = difflib.get_close_matches(key, set(_declared_options).union(read_keys), n=1, cutoff=0.8)
    return close[0] if close else None


# Keys that pipelines (Sisyphus/i6_core jobs) write into every config, and which this trainer does not use.
PIPELINE_INJECTED_KEYS = frozenset(
    {
        "target",
        "use_horovod",
        "horovod_reduce_type",
        "horovod_param_sync_step",
        "horovod_dataset_distribution",
        "tf_log_dir",
        "tf_session_opts",
        "backend",
        "behavior_version",
        "ext_model",
        "ext_learning_rate_file",
        "ext_load_epoch",
        "forward_override_hdf_output",
        "output_file",
        "search_output_file",
        "search_output_file_format",
        "search_output_layer",
        "search_data",
        "extern_data",
        "model_outputs",
        "network",
        "use_tensorflow",
        "debug_print_layer_output_template",
        "debug_mode",
        "config",
    }
)

# Options of RETURNN and Mini-RETURNN that this trainer does not implement. Existing configs set them (i6 setups
# write log_batch_size, cache_size, ...), and several are near misses of known keys (log_batch_size, cache_size and
# batch_size_dev of batch_size): they are reported as unused, never as typos.
RETURNN_KEYS_NOT_USED = frozenset(
    {
        "allow_skipping_seqs_in_forward",
        "apply_cleanup_old_models_to_optim_states",
        "batch_size_dev",
        "batch_size_train",
        "cache_size",
        "calculate_exp_loss",
        "chunk_eval",
        "debug_shell_before_train_loop",
        "decouple_constraints",
        "debug_add_check_numerics_on_output",
        "debug_add_check_numerics_ops",
        "debug_grad_summaries",
        "debug_objective_loss_summaries",
        "debug_print_layer_output_shape",
        "debug_save_updater_vars",
        "maximize_grad_norm",
        "tf_log_memory_usage",
        "tf_log_device_placement",
        "default_float_dtype",
        "dry_run",
        "dummy_dataset_num_seqs",
        "epoch",
        "epoch_end",
        "epoch_start",
        "forward_auto_split_batch_on_oom",
        "forward_data",
        "grad_scaler",
        "ipython",
        "load_model_post_hooks",
        "log_batch_size",
        "log_grad_norm",
        "multiprocessing",
        "need_data",
        "num_allowed_consec_invalid_gradient_steps",
        "on_size_limit",
        "packed_batch_size",
        "patch_atfork",
        "reset_dev_memory_caches",
        "sort_dataset",
        "start_batch",
        "startup_callback",
        "tensorboard_opts",
        "torch_batching",
        "torch_cuda_graph",
        "torch_log_memory_usage",
        "torch_profile",
        "train_dummy_dataset_num_seqs",
        "truncation",
        "update_on_device",
        "use_dummy_datasets",
        "use_hot_reloading",
        "use_lovely_tensors",
        "use_tensorboard",
        "use_train_proc_manager",
        "watch_memory",
    }
)


def returnn_key_not_used(key: str) -> bool:
    """Whether ``key`` is an option of RETURNN or Mini-RETURNN that this trainer does not implement (the keys above,
    and RETURNN's many ``debug_*`` switches of its TensorFlow backend)."""
    return key in RETURNN_KEYS_NOT_USED or key.startswith("debug_")
