"""Scripts under ``tools/`` loaded as modules, for tests that call their
functions rather than run them in a child process."""
import importlib.util
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / 'tools'


def load_tool(name: str, folder: str = 'analysis'):
    """``tools/<folder>/<name>.py`` as a fresh module."""
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', TOOLS / folder / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
