"""``import pxpo`` is light: no torch, diffusers, transformers or peft until something needs them."""

import importlib
import json
import subprocess
import sys

import pxpo

HEAVY = ("torch", "diffusers", "transformers", "peft")

_PROBE = """
import json, sys
import pxpo
loaded_by_import = [name for name in {heavy!r} if name in sys.modules]
from pxpo.models import check_model_reference, registered_pipelines
check_model_reference("pxpo-tiny")
loaded_by_checks = [name for name in {heavy!r} if name in sys.modules]
print(json.dumps({{"import": loaded_by_import, "checks": loaded_by_checks, "pipelines": registered_pipelines()}}))
"""


def test_import_pxpo_loads_no_heavy_library_and_registers_the_bundled_models():
    """In a fresh interpreter: ``import pxpo`` loads none of the heavy libraries, and registered names are known
    (checking a model name loads none either; validating a config may: it looks up the algorithm's class)."""
    result = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY)], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["import"] == [], f"import pxpo loaded {report['import']}"
    assert report["checks"] == [], f"checking a model name loaded {report['checks']}"
    assert {"pxpo-tiny", "pxpo-tiny-flow", "tiny-random", "tiny-random-sd3", "tiny-random-flux"} <= set(report["pipelines"])


def test_every_lazy_top_level_export_resolves():
    for name, module in pxpo._EXPORTS.items():
        assert getattr(pxpo, name) is getattr(importlib.import_module(module), name), name
    assert set(pxpo.__all__) == {"__version__", *pxpo._EXPORTS}


def test_the_bundled_model_loads_by_name():
    pipe = pxpo.load_pipeline("pxpo-tiny")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
