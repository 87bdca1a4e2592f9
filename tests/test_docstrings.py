"""The Examples sections of public docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import numpy as np
import pytest

import napari_stemcluster

# GUI modules need a display and napari; their examples are covered by the GUI tests.
SKIP = ("napari_stemcluster.widgets", "napari_stemcluster._")


def _modules():
    for info in pkgutil.walk_packages(napari_stemcluster.__path__, "napari_stemcluster."):
        name = info.name
        if not name.split(".")[-1].startswith("_") and not name.startswith(SKIP):
            yield name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs={"np": np, **vars(module)}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
