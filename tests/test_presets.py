"""One table of model presets for runtime and simulator; the simulator imports no torch."""

import subprocess
import sys

import pytest

from conftest import ROOT
from tensorrt_llm_dwdp.runtime import preset
from tensorrt_llm_dwdp.runtime.model_config import PRESETS, ModelConfig
from tensorrt_llm_dwdp.sim.models import MODELS, model_of
from tensorrt_llm_dwdp.workloads.presets import ALIASES, MODEL_PRESETS, preset_kwargs

# From each model's published config.json (hidden_size, num_hidden_layers, first_k_dense_replace, n_routed_experts or
# num_experts, num_experts_per_tok, moe_intermediate_size, n_shared_experts, vocab_size, intermediate_size), written
# here by hand: the table and the simulator's reading of it are checked against them, not against each other.
PUBLISHED = {
    "deepseek-v3": (7168, 61, 3, 256, 8, 2048, 1, 129280, 18432),
    "deepseek-r1": (7168, 61, 3, 256, 8, 2048, 1, 129280, 18432),
    "deepseek-v2-lite": (2048, 27, 1, 64, 6, 1408, 2, 102400, 10944),
    "qwen3-30b-a3b": (2048, 48, 0, 128, 8, 768, 0, 151936, 0),
    "qwen3-235b-a22b": (4096, 94, 0, 128, 8, 1536, 0, 151936, 0),
}


def _shapes(m):
    return (m.hidden, m.layers, m.dense_layers, m.experts, m.top_k, m.moe_inter, m.shared, m.vocab, m.dense_inter)


def test_every_preset_is_a_valid_runtime_config_with_its_published_shapes():
    for name in MODEL_PRESETS:
        ModelConfig(name, **preset_kwargs(name))  # validates
    assert set(MODELS) == set(PUBLISHED)
    for name, want in PUBLISHED.items():
        assert _shapes(MODELS[name]) == want, name  # the simulator's view
    for name in PRESETS:  # the runtime's presets (bench --preset), read by the one conversion
        published = PUBLISHED.get(ALIASES.get(name, name))
        if published is not None:
            assert _shapes(model_of(preset(name))) == published, name


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
