"""TensorRT-LLM's ConfigurableMoE under DWDP: built without a token exchange, chunked by this rank's own tokens.

ConfigurableMoE chooses its exchange strategy once, in `_create_comm_strategy_auto()`, called from __init__ once
the backend is built (1.2 line and main; newer main from `_install_backend_dependents()` when the backend is bound),
and main builds its forward scheduler from it right after. Main's composite-view DWDP gets None there for its own
layers (the backend reads its weight Parameters, whose .data DWDP swaps, so no exchange is needed). With the `dwdp:` section on, the adapter is installed before any model is built, and the wrapped method
answers None the same way for every layer DWDP can serve; the layer then counts chunks by this rank's tokens (main's
DWDP branch of calculate_num_chunks), and attach() makes its partition all-local. Where DWDP stays off after all
(mode auto, a draft model, a second model), `restore_exchange` builds the strategy TensorRT-LLM would have built.
"""

from __future__ import annotations

import functools
import sys
import weakref
from typing import Callable, Optional

from .discover import BACKENDS

# 1.2 and main until the fused MoE modules moved; main after (`tensorrt_llm._torch.moe.fused_moe`)
MODULES = ("tensorrt_llm._torch.modules.fused_moe.configurable_moe",
           "tensorrt_llm._torch.moe.fused_moe.configurable_moe")
_skipped: "weakref.WeakSet" = weakref.WeakSet()  # wrappers whose exchange was left out for DWDP
_rebuilding: set = set()  # ids of wrappers restore_exchange is building the exchange of


def servable(m) -> bool:
    """Whether DWDP can serve this ConfigurableMoE, as far as construction can tell (attach checks the rest and
    refuses loudly): a backend whose experts are in a layout DWDP reads, no EPLB, not upstream's own DWDP."""
    backend = getattr(m, "backend", None)
    layout = next((BACKENDS[c.__name__] for c in type(backend).__mro__ if c.__name__ in BACKENDS), None)
    return (layout is not None and getattr(m, "layer_load_balancer", None) is None
            and not getattr(m, "enable_dwdp", False))


def patch_class(module, setter: Callable) -> None:
    """Wrap module.ConfigurableMoE._create_comm_strategy_auto; setter(obj, name, value) records the undo."""
    cls = getattr(module, "ConfigurableMoE", None)
    original = getattr(cls, "_create_comm_strategy_auto", None)
    if original is None or getattr(original, "_dwdp_original", None) is not None:
        return

    @functools.wraps(original)
    def create(self, *args, **kwargs):
        if id(self) not in _rebuilding and servable(self):
            _skipped.add(self)
            return None
        return original(self, *args, **kwargs)

    create._dwdp_original = original
    setter(cls, "_create_comm_strategy_auto", create)


def skipped(m) -> bool:
    return m in _skipped


def restore_exchange(model) -> int:
    """Build the exchange of every wrapper in model whose exchange was left out; returns how many."""
    done = 0
    for m in [m for m in model.modules() if m in _skipped]:
        _rebuilding.add(id(m))
        try:
            rebuild = getattr(m, "_install_backend_dependents", None)
            if rebuild is not None:  # newer main: exchange, validation and scheduler in one step
                rebuild()
            else:
                m.comm = type(m)._create_comm_strategy_auto._dwdp_original(m)
                scheduler = getattr(sys.modules.get(type(m).__module__), "create_moe_scheduler", None)
                if scheduler is not None and hasattr(m, "scheduler"):  # main: built from comm, so built again
                    m.scheduler = scheduler(m)
        finally:
            _rebuilding.discard(id(m))
        _skipped.discard(m)
        done += 1
    return done


def chunk_by_own_tokens(m) -> Optional[Callable[[], None]]:
    """A DWDP layer processes only this rank's tokens: its chunk count comes from max(all_rank_num_tokens), as
    main's calculate_num_chunks has it for upstream's DWDP layers (the 1.2 line sums every rank's, and main without
    an exchange asserts a one-rank list). Returns the undo, or None where the module has no such method."""
    if not hasattr(m, "calculate_num_chunks") or not hasattr(m, "moe_max_num_tokens"):
        return None

    def calculate_num_chunks(all_rank_num_tokens):
        return -(-max(all_rank_num_tokens) // m.moe_max_num_tokens)

    m.calculate_num_chunks = calculate_num_chunks
    return lambda: vars(m).pop("calculate_num_chunks", None)
