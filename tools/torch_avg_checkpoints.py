#!/usr/bin/env python3
"""Average checkpoints: see returnn/tools/torch_avg_checkpoints.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from returnn.tools.torch_avg_checkpoints import main

if __name__ == "__main__":
    sys.exit(main())
