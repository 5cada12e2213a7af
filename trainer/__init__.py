"""midflight's instrumented OPT-recipe trainer: FSDP2, fairscale FSDP or plain, launched by torchrun.

It records only through the logbook Recorder API and never touches DuckDB.

    python -m midflight.trainer --model tiny --steps 200 --run-dir runs/demo
    torchrun --nproc-per-node 2 -m midflight.trainer --model tiny --steps 200 --run-dir runs/demo
"""
