import pytest

from tests.jobs.helpers import write_zoo_tasks


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private MERGELAB_HOME (evaluation writes its task shims and caches under it)."""
    path = tmp_path / "home"
    monkeypatch.setenv("MERGELAB_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def zoo_tasks(tmp_path_factory):
    """A one-task 'zoo' suite folder (suite 'zoo' with this zoo_root)."""
    return write_zoo_tasks(tmp_path_factory.mktemp("zoo"), names=("add",))
