"""The config is plain data: reading and checking options imports no torch."""

import subprocess
import sys

# Plain Python (no BLAS in the global scope): zipo loads torch only when the model is used.
READ_CONFIG_WITHOUT_TORCH = """
import sys
import zipo.config
cfg = zipo.config.resolve_config(preset="paper", options={"likelihood": "nb"})
assert cfg.model.likelihood == "nb"
try:
    cfg.set_option("activation", "swish")
except ValueError as e:
    assert "activation must be one of 'sigmoid', 'relu'" in str(e), e
else:
    raise AssertionError("an unknown activation was accepted")
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, f"reading a config imported {loaded[:5]}"
import zipo
assert zipo.ZiPo.__name__ == "ZiPo" and "torch" in sys.modules
"""


def test_config_imports_no_torch():
    done = subprocess.run([sys.executable, "-c", READ_CONFIG_WITHOUT_TORCH],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_every_activation_named_is_implemented():
    from zipo.nn.network import ACTIVATION_MODULES
    from zipo.option_types import ACTIVATIONS

    assert set(ACTIVATION_MODULES) == set(ACTIVATIONS)
