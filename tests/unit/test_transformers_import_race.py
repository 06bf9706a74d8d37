"""Concurrent model loads import from transformers in several worker threads at once; its lazy module is not
thread-safe ("cannot import name 'AutoImageProcessor' from 'transformers'"), so `resolve_transformers`
resolves the names once under a lock before every torch load. Checked in a fresh interpreter, where nothing
is imported yet."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import threading
from serving.adapters.hf_common import resolve_transformers
errors = []
def load(names):
    try:
        resolve_transformers()
        exec("from transformers import " + names)
    except Exception as e:
        errors.append(repr(e))
names = ["AutoImageProcessor, AutoModelForImageClassification", "AutoImageProcessor, DepthAnythingForDepthEstimation",
         "AutoModel, AutoProcessor", "AutoImageProcessor, VitPoseForPoseEstimation", "AutoProcessor, XCLIPModel",
         "AutoImageProcessor, SegformerForSemanticSegmentation"]
threads = [threading.Thread(target=load, args=(n,)) for n in names]
for t in threads: t.start()
for t in threads: t.join()
print(errors)
"""


def test_concurrent_first_imports_from_transformers_all_succeed():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
