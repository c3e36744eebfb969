"""train.py with a pause inside the checkpoint writer: once the temporary file is written and
before it is renamed over ckpt.pt, it prints a line and sleeps, so test_faults.py can SIGKILL
the process exactly there."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402


fsync = os.fsync


def pause(fd):
    if not os.readlink(f"/proc/self/fd/{fd}").endswith("ckpt.pt.tmp"):
        return fsync(fd)  # another file written atomically, such as the record
    print("inside the checkpoint writer", flush=True)
    time.sleep(300)


os.fsync = pause  # checkpoint.atomic_write calls it between writing the temporary file and the rename
train.main(sys.argv[1:])
