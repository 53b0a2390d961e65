"""Antenna's own code, loaded unmodified from its repository at 731cc2a2.

QJ_ANTENNA_REPO names a clone (or bare git directory) of RolnickLab/antenna
holding commit 731cc2a2; nothing of Antenna is copied into this repository.
``task_queue_module`` executes ami/ml/orchestration/nats_queue.py as it is at
that commit, with the few imports it makes of Django, asgiref and Antenna's
own schema replaced by stand-ins (settings: NATS_URL and NATS_TASK_TTR as in
config/settings/base.py; ``sync_to_async`` runs the call on a thread, as
asgiref does; ``PipelineProcessingTask`` with the fields of ami/ml/schemas.py).
Everything else, nats-py included, is real.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import types
import unittest
from typing import Optional

ANTENNA_COMMIT = "731cc2a2bdcc4f4032aafdd1fddbb04c6706e34e"
HOW_TO_GET = ("set QJ_ANTENNA_REPO to a clone of https://github.com/RolnickLab/antenna (or its git directory) "
              f"that holds commit {ANTENNA_COMMIT[:8]}")


def repo() -> str:
    path = os.environ.get("QJ_ANTENNA_REPO")
    if not path:
        raise unittest.SkipTest("Antenna's code not available: " + HOW_TO_GET)
    return path


def source(path: str) -> str:
    """A file of Antenna at the cited commit."""
    where = repo()
    git = ["git", "-C", where] if os.path.isdir(os.path.join(where, ".git")) else ["git", "--git-dir", where]
    out = subprocess.run([*git, "show", f"{ANTENNA_COMMIT}:{path}"], capture_output=True, text=True)
    if out.returncode != 0:
        raise unittest.SkipTest(f"Antenna's {path} at {ANTENNA_COMMIT[:8]} not readable in {where}: "
                                f"{out.stderr.strip()} ({HOW_TO_GET})")
    return out.stdout


class PipelineProcessingTask:
    """ami.ml.schemas.PipelineProcessingTask's fields (a pydantic model there)."""

    def __init__(self, id: str, image_id: str, image_url: str, reply_subject: Optional[str] = None) -> None:
        self.id, self.image_id, self.image_url, self.reply_subject = id, image_id, image_url, reply_subject

    def dict(self) -> dict:
        return {"id": self.id, "image_id": self.image_id, "image_url": self.image_url,
                "reply_subject": self.reply_subject}


def sync_to_async(fn):
    async def call(*args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)
    return call


def task_queue_module(nats_url: str) -> types.ModuleType:
    """ami/ml/orchestration/nats_queue.py at 731cc2a2, executed."""
    if sys.version_info < (3, 10):
        raise unittest.SkipTest("Antenna's code needs Python 3.10 or later")
    text = source("ami/ml/orchestration/nats_queue.py")
    settings = types.SimpleNamespace(NATS_URL=nats_url, NATS_TASK_TTR=300)
    stubs = {}
    for name in ("django", "django.conf", "asgiref", "asgiref.sync", "ami", "ami.ml", "ami.ml.schemas",
                 "ami.ml.orchestration", "ami.ml.orchestration.nats_queue"):
        stubs[name] = types.ModuleType(name)
    stubs["django.conf"].settings = settings
    stubs["asgiref.sync"].sync_to_async = sync_to_async
    stubs["ami.ml.schemas"].PipelineProcessingTask = PipelineProcessingTask
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        mod = stubs["ami.ml.orchestration.nats_queue"]  # registered while it runs: dataclasses look it up
        mod.__file__ = f"antenna@{ANTENNA_COMMIT[:8]}/ami/ml/orchestration/nats_queue.py"
        exec(compile(text, mod.__file__, "exec"), mod.__dict__)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return mod
