"""Follow mode picks the right observer for the filesystem, and keeps up in-process."""

import time

from midflight import logbook
from midflight.logbook.store import memory, queries
from midflight.logbook.store.follow import Follower, filesystem_type


def test_filesystem_type_picks_the_longest_mount(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "overlay / overlay rw 0 0\n"
        "nas:/export /mnt/shared nfs4 rw 0 0\n"
        "tmpfs /mnt/shared/tmp tmpfs rw 0 0\n"
        "lustre@tcp:/fs /mnt/my\\040lustre lustre rw 0 0\n"
    )
    assert filesystem_type("/mnt/shared/runs/opt", str(mounts)) == "nfs4"
    assert filesystem_type("/mnt/shared/tmp/x", str(mounts)) == "tmpfs"
    assert filesystem_type("/mnt/sharedother", str(mounts)) == "overlay"
    assert filesystem_type("/mnt/my lustre/run", str(mounts)) == "lustre"
    assert filesystem_type("/x", str(tmp_path / "missing")) is None


def test_follower_sees_new_records_and_new_segments(tmp_path):
    run_dir = tmp_path / "run"
    run = logbook.init(run_dir, flush_every=0.05)
    run.log({"loss": 1.0}, step=1)
    run.flush()
    store = memory()
    for poll in (False, True):
        with Follower(store, run_dir, poll=poll, rescan_every=0.5) as follower:
            assert follower.poll is poll
            before = len(queries.series(store, "run", "loss", which="all"))
            run.log({"loss": 2.0}, step=before + 1)
            run.flush()
            deadline = time.monotonic() + 3
            while len(queries.series(store, "run", "loss", which="all")) == before and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(queries.series(store, "run", "loss", which="all")) == before + 1
    run.finish()
    with Follower(store, run_dir, rescan_every=0.5):
        with logbook.init(run_dir, resume_step=1, flush_every=0.05) as run2:
            run2.log({"loss": 0.5}, step=2)
        deadline = time.monotonic() + 3
        while len(queries.segments(store, "run")) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(queries.segments(store, "run")) == 2


def test_follower_of_an_empty_folder_waits_for_runs_only_when_asked(tmp_path):
    import pytest

    folder = tmp_path / "runs"
    folder.mkdir()
    with pytest.raises(ValueError, match="holds no run directories"):
        Follower(memory(), folder).ingest_once()  # the CLI: a folder without runs is a mistake
    store = memory()
    follower = Follower(store, folder, allow_empty=True, rescan_every=0.2).start()  # the dashboard: wait for one
    try:
        assert queries.runs(store).empty
        run = logbook.init(folder / "late", name="late", config={})
        run.log({"loss": 1.0}, step=1)
        run.finish()
        deadline = time.time() + 10
        while queries.runs(store).empty and time.time() < deadline:
            time.sleep(0.05)
        runs = queries.runs(store)
        assert list(runs["run_id"]) == ["late"] and list(runs["name"]) == ["late"]
        assert runs["path"].iloc[0].endswith("late")
    finally:
        follower.stop()
