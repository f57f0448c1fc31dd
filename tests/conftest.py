"""Shared test fixtures."""

from __future__ import annotations

import logging

import pytest

from returnn import config as config_module


@pytest.fixture(autouse=True)
def _reset_global_state():
    """Each test starts without a global config and leaves none behind."""
    config_module.set_global_config(None)
    yield
    config_module.set_global_config(None)
    from returnn.log import log

    log.close()
    logging.getLogger("returnn").propagate = True
