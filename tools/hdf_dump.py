#!/usr/bin/env python3
"""Dump a dataset into an HDF file: see returnn/tools/hdf_dump.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from returnn.tools.hdf_dump import main

if __name__ == "__main__":
    sys.exit(main())
