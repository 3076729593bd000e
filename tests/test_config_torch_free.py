"""The config is plain data: reading and checking options imports no torch."""

import subprocess
import sys

# zipo/__init__.py imports torch first on purpose (inside R it must not bind to R's BLAS,
# zipo/_torch_blas.py), so the package is stood in for by a bare one that does not run it.
READ_CONFIG_WITHOUT_TORCH = """
import importlib.util, sys, types
package = types.ModuleType("zipo")
package.__path__ = list(importlib.util.find_spec("zipo").submodule_search_locations)
sys.modules["zipo"] = package
import zipo.config
cfg = zipo.config.resolve_config(preset="paper", options={"likelihood": "nb"})
assert cfg.model.likelihood == "nb"
try:
    cfg.set_option("activation", "swish")
except ValueError as e:
    assert "activation must be one of ('sigmoid'" in str(e), e
else:
    raise AssertionError("an unknown activation was accepted")
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, f"reading a config imported {loaded[:5]}"
"""


def test_config_imports_no_torch():
    done = subprocess.run([sys.executable, "-c", READ_CONFIG_WITHOUT_TORCH],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_every_activation_named_is_implemented():
    from zipo.nn.network import ACTIVATION_MODULES
    from zipo.option_types import ACTIVATIONS

    assert set(ACTIVATION_MODULES) == set(ACTIVATIONS)
