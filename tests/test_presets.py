"""One table of model presets for runtime and simulator; the simulator imports no torch."""

import subprocess
import sys

import pytest

from conftest import ROOT
from tensorrt_llm_dwdp.workloads.presets import ALIASES, MODEL_PRESETS, preset_kwargs
from tensorrt_llm_dwdp.sim.models import model_of
from tensorrt_llm_dwdp.runtime.model_config import PRESETS, ModelConfig
from tensorrt_llm_dwdp.sim.models import MODELS


def test_every_preset_is_a_valid_runtime_config_and_the_sim_reads_the_same_shapes():
    for name in MODEL_PRESETS:
        cfg = ModelConfig(name, **preset_kwargs(name))  # validates
        if name in MODELS:
            ours, theirs = model_of(cfg), MODELS[name]
            assert (ours.hidden, ours.layers, ours.dense_layers, ours.experts, ours.top_k, ours.moe_inter,
                    ours.shared, ours.attention) == (theirs.hidden, theirs.layers, theirs.dense_layers,
                                                     theirs.experts, theirs.top_k, theirs.moe_inter, theirs.shared,
                                                     theirs.attention)
    for alias, target in ALIASES.items():
        assert PRESETS[alias].hidden == MODEL_PRESETS[target]["hidden"]


def test_dsv3_counts_match_the_published_total():
    # DeepSeek-V3: 671B parameters in all (model card), of which the 58 MoE layers' routed experts are most.
    m = MODELS["deepseek-v3"]
    routed = m.moe_layers * m.experts * m.expert_params
    assert 640e9 < routed + m.layers * m.attention.proj_params + m.moe_layers * 3 * m.hidden * m.moe_inter + \
        m.dense_layers * 3 * m.hidden * m.dense_inter + 2 * m.vocab * m.hidden < 700e9


def test_the_table_is_read_only():
    with pytest.raises(TypeError):
        MODEL_PRESETS["deepseek-v3"]["hidden"] = 1  # type: ignore[index]


_NO_TORCH = """
import sys
sys.modules['torch'] = None  # any 'import torch' now raises ImportError
import tensorrt_llm_dwdp
import tensorrt_llm_dwdp.workloads.presets
import tensorrt_llm_dwdp.sim.cli, tensorrt_llm_dwdp.sim.compare, tensorrt_llm_dwdp.sim.engine
from tensorrt_llm_dwdp.sim.cli import main
rc = main(['--machine', 'h200', '--model', 'qwen3-30b-a3b', '--ranks', '4', '--iterations', '2'])
assert rc == 0, rc
try:
    tensorrt_llm_dwdp.DwdpHooks
except ImportError:
    print('LAZY-OK')
"""


def test_sim_runs_in_a_process_without_torch():
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the hooks still need torch: the lazy name reached for it only when asked
    assert "LAZY-OK" in proc.stdout
