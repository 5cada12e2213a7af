"""midflight's dashboard: a Streamlit multipage app over the logbook's queries (`midflight dashboard`)."""

import os
import sys
from pathlib import Path

HOME = Path(__file__).resolve().parents[1]  # the repository in a checkout; site-packages/midflight when installed
SAMPLE_RUNS = HOME / "sample_runs"


def child_env(**extra: str) -> dict:
    """The environment for a child Python (Streamlit, the detector worker, the demo trainer) that imports midflight.

    It gets the folder that holds the `midflight` package on its path, so that a checkout works without an
    install; never a folder of midflight's parts, which would shadow other packages named logbook or trainer.
    """
    holder = str(Path(sys.modules["midflight"].__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [holder, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}
