#!/usr/bin/env python3
"""Export a model to ONNX: see returnn/tools/torch_export_to_onnx.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from returnn.tools.torch_export_to_onnx import main

if __name__ == "__main__":
    sys.exit(main())
