"""Export a checkpoint's model to ONNX with the config's ``export`` function.

``tools/torch_export_to_onnx.py CONFIG CHECKPOINT OUT.onnx [--device cpu] [--verbosity N]
[--input_names a,b] [--output_names c,d]``

The model comes from the config's ``get_model(epoch=, step=, onnx_export=True, **kwargs)`` with the checkpoint's
epoch and step, loaded with the checkpoint's parameters and put in eval mode. Then the config's
``export(*, model, f, input_names, output_names, **kwargs)`` writes the file, typically with ``torch.onnx.export``
(which needs the optional package ``onnx``). A run context with stage ``"forward_step"`` is active throughout, so
model code can call ``returnn.torch.context.get_run_ctx()``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch

from returnn.config import declare_options, load_config
from returnn.errors import ConfigError, ReturnnError, StepFunctionError
from returnn.log import log
from returnn.torch.checkpoints import load_checkpoint, load_model_state, resolve_checkpoint_path
from returnn.torch.context import RunCtx, set_run_ctx
from returnn.torch.step_functions import check_accepts_kwargs

logger = logging.getLogger(__name__)

declare_options(
    "Tools",
    {
        "export": (
            None,
            "For tools/torch_export_to_onnx.py: export(*, model, f, input_names, output_names, **kwargs) writes the "
            "model to the ONNX file f (e.g. with torch.onnx.export).",
        ),
    },
)


def export_to_onnx(
    config_file: str,
    checkpoint: str,
    out_filename: str,
    *,
    device: str = "cpu",
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
) -> None:
    config = load_config([config_file, "++device", device])
    config.install_module()
    get_model = config.callable("get_model")
    export = config.callable("export")
    for name, func in (("get_model", get_model), ("export", export)):
        if func is None:
            raise ConfigError(f"{config_file}: the config must define {name!r} to export a model to ONNX")
    check_accepts_kwargs(get_model, "get_model", "get_model(*, epoch, step, **kwargs)")
    check_accepts_kwargs(export, "export", "export(*, model, f, input_names, output_names, **kwargs)")
    path = resolve_checkpoint_path(checkpoint, config_key="checkpoint")
    content = load_checkpoint(path, map_location=device)
    epoch, step = int(content.get("epoch", 0)), int(content.get("step", 0))
    set_run_ctx(RunCtx(stage="forward_step", device=device, engine=None, epoch=epoch, global_step=step))
    try:
        model = get_model(epoch=epoch, step=step, onnx_export=True)
        if not isinstance(model, torch.nn.Module):
            raise StepFunctionError(f"get_model must return a torch.nn.Module, got {type(model).__name__}")
        load_model_state(model, content["model"], source=path)
        model.to(device).eval()
        logger.info(f"exporting model of epoch={epoch} step={step} from {path} to {out_filename}")
        with torch.no_grad():
            export(model=model, args=None, f=out_filename, input_names=input_names, output_names=output_names)
    finally:
        set_run_ctx(None)


def _names(text: str | None) -> list[str] | None:
    return [name for name in text.split(",") if name] if text else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the config file (defines get_model and export)")
    parser.add_argument("checkpoint", help="the checkpoint, e.g. models/epoch.100.pt")
    parser.add_argument("out_onnx_filename", help="the ONNX file to write")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--verbosity", type=int, default=4, help="log verbosity 0-5")
    parser.add_argument("--input_names", help="comma-separated names, passed to export")
    parser.add_argument("--output_names", help="comma-separated names, passed to export")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    log.initialize(verbosity=[args.verbosity])
    try:
        export_to_onnx(
            args.config,
            args.checkpoint,
            args.out_onnx_filename,
            device=args.device,
            input_names=_names(args.input_names),
            output_names=_names(args.output_names),
        )
    except ReturnnError as exc:
        print(f"torch_export_to_onnx: error: {exc}", file=sys.stderr)
        return 2
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
