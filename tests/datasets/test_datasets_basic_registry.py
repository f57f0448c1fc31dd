"""init_dataset: the forms of a dataset definition, the class registry, and the option check."""

from __future__ import annotations

import re
import sys

import pytest

from returnn.datasets import Dataset, get_dataset_class, init_dataset, register_dataset_class
from returnn.datasets.basic import init_dataset as init_dataset_via_basic
from returnn.datasets.generating import DummyDataset, StaticDataset, Task12AXDataset
from returnn.errors import DatasetError

DUMMY = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 4}


def test_dict_with_class_name():
    dataset = init_dataset(DUMMY)
    assert type(dataset) is DummyDataset
    assert dataset.num_outputs == {"classes": (3, 1), "data": (2, 2)}


def test_dict_with_class_object_and_kwargs_precedence():
    dataset = init_dataset(
        {**DUMMY, "class": DummyDataset, "name": "mine"},
        default_kwargs={"name": "train", "seq_ordering": "reverse"},
        extra_kwargs={"num_seqs": 6},
    )
    assert (dataset.name, dataset.seq_ordering) == ("mine", "reverse")
    dataset.init_seq_order(epoch=1)
    assert dataset.num_seqs == 6


def test_instance_is_returned_as_is():
    dataset = Task12AXDataset(num_seqs=3)
    assert init_dataset(dataset, default_kwargs={"name": "train"}) is dataset
    assert dataset.name == "Task12AXDataset"


def test_callable_and_dict_literal_string():
    assert type(init_dataset(lambda: DUMMY)) is DummyDataset
    dataset = init_dataset("{'class': 'Task12AXDataset', 'num_seqs': 5}", default_kwargs={"name": "dev"})
    assert (type(dataset), dataset.name) == (Task12AXDataset, "dev")


def test_basic_module_has_returnn_import_path():
    assert init_dataset_via_basic is init_dataset


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ("train.hdf", r"dataset given as a string must be a dict literal starting with '\{', got 'train.hdf'"),
        ("{'class': ", r"dataset string .* is not a valid Python dict literal"),
        (42, r"expected a dataset dict with 'class', a Dataset or a callable, got int"),
        ({"num_seqs": 3}, r"dataset dict has no 'class' key: \{'num_seqs': 3\}"),
        ({"class": dict}, r"dataset 'class' must be a class name or a Dataset subclass, got <class 'dict'>"),
    ],
)
def test_bad_definitions(opts, match):
    with pytest.raises(DatasetError, match=match):
        init_dataset(opts)


def test_unknown_class_suggests_and_lists():
    with pytest.raises(DatasetError) as info:
        init_dataset({"class": "DumyDataset"})
    message = str(info.value)
    assert message.startswith("unknown dataset class 'DumyDataset'. Did you mean 'DummyDataset'")
    assert "Known classes: " in message
    assert "StaticDataset, Task12AXDataset" in message
    assert "_SymbolTask" not in message


def test_unknown_and_missing_options_reported_together():
    with pytest.raises(DatasetError) as info:
        init_dataset({"class": "DummyDataset", "input_dm": 2, "output_dim": 3, "num_seq": 4, "partition_epochs": 2})
    message = str(info.value)
    assert message.startswith(
        "dataset class DummyDataset: unknown option 'input_dm' (did you mean 'input_dim'?); "
        "unknown option 'num_seq' (did you mean 'num_seqs'?); "
        "unknown option 'partition_epochs' (did you mean 'partition_epoch'?); "
        "missing required option 'input_dim'; missing required option 'num_seqs'. Valid options: "
    )
    assert "input_max_value, input_scale, input_shift, name, num_seqs, output_dim, partition_epoch" in message


def test_options_of_a_subclass_chain_are_valid():
    dataset = init_dataset({"class": "Task12AXDataset", "num_seqs": 2, "partition_epoch": 2, "name": "x"})
    assert dataset.partition_epoch == 2


class OpenOptions(StaticDataset):
    """A user class that consumes options itself: its ``**kwargs`` do not all go to the base."""

    def __init__(self, scale: float = 1.0, **kwargs):
        self.scale = scale
        super().__init__(**kwargs)


def test_registering_a_user_class():
    register_dataset_class(OpenOptions)
    assert get_dataset_class("OpenOptions") is OpenOptions
    dataset = init_dataset({"class": "OpenOptions", "data": [{"data": [[1.0]]}], "scale": 2.0})
    assert dataset.scale == 2.0
    with pytest.raises(DatasetError, match=r"cannot register <class 'int'>: not a subclass"):
        register_dataset_class(int)
    with pytest.raises(DatasetError, match=r"unknown option 'scal' \(did you mean 'scale'\?\)"):
        init_dataset({"class": OpenOptions, "data": [{"data": [[1.0]]}], "scal": 2.0})


def test_every_registered_class_is_a_dataset():
    from returnn.datasets import registry

    for name in registry._registry.names():
        assert issubclass(get_dataset_class(name), Dataset)
        assert get_dataset_class(name).__name__ == name


# --- dataset modules that fail to import -------------------------------------------------------------------


@pytest.fixture
def registry_with_broken_modules(tmp_path, monkeypatch):
    """The registry over the real dataset modules plus a package with one good and two broken dataset modules."""
    from returnn.datasets import registry

    package = tmp_path / "halfdone_datasets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "good.py").write_text(
        "from returnn.datasets.generating import StaticDataset\n\nclass GoodDataset(StaticDataset):\n    pass\n"
    )
    (package / "half_written.py").write_text(
        "from returnn.datasets.basic import Dataset\n\nclass HalfWrittenDataset(Dataset):\n    def __init__(self,\n"
    )
    (package / "needs_package.py").write_text(
        "import not_an_installed_package\n\nclass NeedsPackageDataset:\n    pass\n\nclass _Helper:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = [f"halfdone_datasets.{name}" for name in ("half_written", "good", "needs_package")]
    monkeypatch.setattr(registry, "_registry", registry._Registry([*registry.DATASET_MODULES, *modules]))
    yield
    for name in ["halfdone_datasets", *modules]:
        sys.modules.pop(name, None)


def test_broken_dataset_module_fails_only_its_own_classes(registry_with_broken_modules, caplog):
    assert type(init_dataset(DUMMY)) is DummyDataset
    assert get_dataset_class("GoodDataset").__name__ == "GoodDataset"
    with pytest.raises(DatasetError) as info:
        init_dataset({"class": "HalfWrittenDataset"})
    assert re.match(
        r"dataset class 'HalfWrittenDataset' is defined in module halfdone_datasets.half_written \(SyntaxError: .*\), "
        r"which failed to import; fix the error in that module \(or install the package it needs\)$",
        str(info.value),
    )
    assert isinstance(info.value.__cause__, SyntaxError)
    with pytest.raises(
        DatasetError,
        match=r"'NeedsPackageDataset' is defined in module halfdone_datasets.needs_package \(ModuleNotFoundError: "
        r"No module named 'not_an_installed_package'\), which failed to import",
    ):
        get_dataset_class("NeedsPackageDataset")
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 2
    assert warnings[1].startswith(
        "dataset module halfdone_datasets.needs_package (ModuleNotFoundError: No module named "
        "'not_an_installed_package') failed to import; its classes ['NeedsPackageDataset'] are unavailable"
    )


def test_unknown_class_names_the_modules_that_failed(registry_with_broken_modules):
    with pytest.raises(DatasetError) as info:
        get_dataset_class("Xyzzy")
    message = str(info.value)
    assert message.startswith("unknown dataset class 'Xyzzy'. Known classes: CachedDataset2, CombinedDataset, ")
    assert "GoodDataset, HDFDataset" in message
    assert re.search(
        r"\(Dataset modules that failed to import: halfdone_datasets.half_written \(SyntaxError: .*half_written.py, "
        r"line 4\)\); halfdone_datasets.needs_package \(ModuleNotFoundError: No module named "
        r"'not_an_installed_package'\).\)$",
        message,
    )
