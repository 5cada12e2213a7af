import os
import sys

from .train import main

code = main()
# The run is over: its logbook is closed (each segment's Recorder is finished by its `with`) and the
# process group is destroyed. Leave without the interpreter's finalization, where Gloo's worker threads
# can still hold work whose tensors reference Python objects: destroying them then aborts the process
# ("terminate called without an active exception", SIGABRT; seen at the exit of a rank whose checkpoints
# failed on a full disk, and discussed upstream in pytorch/pytorch#179291). A crash does not come here:
# it propagates with its traceback, as torchrun expects.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
