"""benchmarks.isolated.in_child: the step runs in another process and its typed errors come back as they are."""

import os

import pytest
from segrt.benchmarks.isolated import in_child
from segrt.runtime.errors import ModelFormatError
from segrt.runtime.manifest import read_manifest


def test_runs_in_another_process_and_returns_its_result() -> None:
    assert in_child(os.getpid) != os.getpid()
    assert in_child(divmod, 17, 5) == (3, 2)


def test_a_typed_error_is_raised_here_with_its_message(tmp_path) -> None:
    with pytest.raises(ModelFormatError, match="is not a directory"):
        in_child(read_manifest, tmp_path / "missing")
