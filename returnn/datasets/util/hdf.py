"""Mini-RETURNN's import path of the HDF writers; they live in :mod:`returnn.datasets.util.hdf_writer`."""

from returnn.datasets.util.hdf_writer import HDFDatasetWriter, SimpleHDFWriter

__all__ = ["HDFDatasetWriter", "SimpleHDFWriter"]
