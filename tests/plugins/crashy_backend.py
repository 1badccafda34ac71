"""A backend that stands in for crashing and hanging converters and runtimes.

It is the onnx backend, except: fp16 conversion aborts the process (SIGABRT),
running the fp32 artifact segfaults, and with CRASHY_SLEEP set the
int8-dynamic conversion hangs.
"""

from __future__ import annotations

import os
import signal
import time

from edgepack.backends.onnx import OnnxBackend


class _SegfaultingRunner:
    name = "segfault"

    def run(self, feeds):
        os.kill(os.getpid(), signal.SIGSEGV)


class CrashyBackend(OnnxBackend):
    def build(self, job):
        if job.precision == "fp16":
            print("crashy converter: about to abort", flush=True)
            os.abort()
        if job.precision == "int8-dynamic" and os.environ.get("CRASHY_SLEEP"):
            time.sleep(600)
        return super().build(job)

    def runner(self, artifact):
        if artifact.folder.name.endswith("-fp32"):
            return _SegfaultingRunner()
        return super().runner(artifact)


BACKEND = CrashyBackend()
