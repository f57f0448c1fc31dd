#!/usr/bin/env python3
"""Runs an experiment: ``python rnn.py CONFIG [++key value ...]`` (see ``python rnn.py --help``)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from returnn.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
