"""The `midflight` wheel: the repository's top-level parts, installed inside one `midflight` namespace.

In the repository `logbook/`, `app/` and `trainer/` sit at the top, where the architecture puts them.
Installed as top-level packages they would collide with PyPI's `Logbook` (import name `logbook`) and
Coqui's `trainer`, so the wheel maps each under `midflight/` instead: `midflight.logbook`,
`midflight.app`, `midflight.trainer`. The sample runs travel with it as `midflight/sample_runs`.
Everything else (name, dependencies, extras, the console script) is in pyproject.toml.
"""

from setuptools import find_packages, setup

PARTS = ("logbook", "app", "trainer")
packages = ["midflight", "midflight.integrations"]  # the namespace, its modules and the library integrations
packages += [f"midflight.{p}" for p in find_packages(include=[f"{part}*" for part in PARTS])]
packages.append("midflight.sample_runs")  # data only: the runs the dashboard opens on when given none

setup(
    packages=packages,
    package_dir={
        "midflight": "midflight",
        **{f"midflight.{p}": p for p in PARTS},
        "midflight.sample_runs": "sample_runs",
    },
    package_data={
        "midflight.logbook": ["analysis/grid_intensity.csv"],
        "midflight.app": [
            "chart_frontend/*.js",
            "streamlit_config.toml",
            "app_pages/*.py",
        ],  # pages: files, not a package
        "midflight.sample_runs": ["*", "**/*"],
    },
)
