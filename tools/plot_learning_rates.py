#!/usr/bin/env python3
"""Plot a learning_rates file as a PNG: see returnn/tools/plot_learning_rates.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from returnn.tools.plot_learning_rates import main

if __name__ == "__main__":
    sys.exit(main())
