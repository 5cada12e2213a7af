"""midflight's dashboard: a Streamlit multipage app over the logbook's queries (`midflight dashboard`)."""

import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

HOME = Path(__file__).resolve().parents[1]  # the repository in a checkout; site-packages/midflight when installed
ENV_DATA = "MIDFLIGHT_DATA"  # where an installed midflight keeps its copy of the sample runs


def sample_runs() -> Path:
    """The runs the dashboard opens when given no folder.

    In a checkout, the repository's own `sample_runs/`. Installed, the package carries them, but the
    dashboard builds a store next to the runs it reads, and that must never land in site-packages (read-only
    in many environments, and left behind by an uninstall): so it opens a copy in the user's data folder
    ($MIDFLIGHT_DATA, else $XDG_DATA_HOME/midflight, else ~/.local/share/midflight), made once per version.
    """
    packaged = HOME / "sample_runs"
    if (HOME / "pyproject.toml").exists():  # a checkout
        return packaged
    try:
        version = metadata.version("midflight")
    except metadata.PackageNotFoundError:
        version = "unknown"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    dest = Path(os.environ.get(ENV_DATA) or Path(data) / "midflight") / f"sample_runs-{version}"
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
        shutil.copytree(packaged, tmp, dirs_exist_ok=True)
        try:
            tmp.rename(dest)  # atomic: two dashboards starting at once both end up with one whole copy
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def child_env(**extra: str) -> dict:
    """The environment for a child Python (Streamlit, the detector worker, the demo trainer) that imports midflight.

    It gets the folder that holds the `midflight` package on its path, so that a checkout works without an
    install; never a folder of midflight's parts, which would shadow other packages named logbook or trainer.
    """
    holder = str(Path(sys.modules["midflight"].__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [holder, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}
