#!/usr/bin/env python3
"""Word error rate of hypotheses against references: see returnn/tools/word_error_rate.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from returnn.tools.word_error_rate import main

if __name__ == "__main__":
    sys.exit(main())
