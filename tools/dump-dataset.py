#!/usr/bin/env python3
"""Print or dump the sequences of a dataset, or their statistics: see returnn/tools/dump_dataset.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from returnn.tools.dump_dataset import main

if __name__ == "__main__":
    sys.exit(main())
