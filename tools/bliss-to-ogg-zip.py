#!/usr/bin/env python3
"""A Bliss corpus as an OggZipDataset zip: see returnn/tools/bliss_to_ogg_zip.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from returnn.tools.bliss_to_ogg_zip import main

if __name__ == "__main__":
    sys.exit(main())
