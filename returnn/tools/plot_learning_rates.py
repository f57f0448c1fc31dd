"""Plot a learning_rates file: the learning rate and every score key over the epochs, as a PNG.

``tools/plot_learning_rates.py LEARNING_RATES [--out curves.png] [--width 10 --height 6 --dpi 100]``, also
``python -m returnn.tools.plot_learning_rates``. The upper panel holds the scores (one line per key, log scale when
all are positive), the lower one the learning rate. Needs the optional package matplotlib.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

from returnn.errors import ConfigError, ReturnnError
from returnn.learning_rate_file import EpochData, load_learning_rate_file

__all__ = ["plot_learning_rates", "main"]


def plot_learning_rates(
    epochs: dict[int, EpochData], out: str, *, width: float = 10.0, height: float = 6.0, dpi: int = 100
) -> None:
    """Write the PNG of ``width x height`` inches at ``dpi`` (so ``width * dpi`` x ``height * dpi`` pixels).

    :param epochs: the learning_rates file's content
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plot_learning_rates needs the package matplotlib: pip install matplotlib") from None
    numbers = sorted(epochs)
    keys = sorted({key for data in epochs.values() for key in data.scores})
    figure, (score_axes, lr_axes) = plt.subplots(
        2, 1, sharex=True, figsize=(width, height), dpi=dpi, gridspec_kw={"height_ratios": [3, 1]}
    )
    all_positive = True
    for key in keys:
        points = [(epoch, epochs[epoch].scores[key]) for epoch in numbers if key in epochs[epoch].scores]
        points = [(epoch, value) for epoch, value in points if math.isfinite(value)]
        all_positive &= all(value > 0 for _, value in points)
        score_axes.plot([e for e, _ in points], [v for _, v in points], marker=".", label=key)
    if keys and all_positive:
        score_axes.set_yscale("log")
    score_axes.set_ylabel("score")
    if keys:
        score_axes.legend(fontsize="small")
    score_axes.grid(True, alpha=0.3)
    with_rate = [epoch for epoch in numbers if epochs[epoch].learning_rate is not None]
    lr_axes.plot(with_rate, [epochs[epoch].learning_rate for epoch in with_rate], marker=".", color="black")
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_xlabel("epoch")
    lr_axes.grid(True, alpha=0.3)
    directory = os.path.dirname(out)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(out, dpi=dpi)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("learning_rates", help="the learning_rates file of a training")
    parser.add_argument("--out", default="learning_rates.png", help="the PNG to write (default: learning_rates.png)")
    parser.add_argument("--width", type=float, default=10.0, help="inches (default 10)")
    parser.add_argument("--height", type=float, default=6.0, help="inches (default 6)")
    parser.add_argument("--dpi", type=int, default=100, help="pixels per inch (default 100)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if not os.path.isfile(args.learning_rates):
            raise ConfigError(f"learning_rates file not found: {args.learning_rates!r}")
        epochs = load_learning_rate_file(args.learning_rates)
        if not epochs:
            raise ConfigError(f"{args.learning_rates!r} holds no epochs yet; plot it after the first epoch")
        plot_learning_rates(epochs, args.out, width=args.width, height=args.height, dpi=args.dpi)
    except ReturnnError as exc:
        print(f"plot_learning_rates: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({len(epochs)} epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
