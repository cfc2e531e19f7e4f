"""Extract the contract tensorrt_llm_dwdp's TensorRT-LLM integration relies on from a TensorRT-LLM source tree.

Reads Python files with `ast` only (nothing of TensorRT-LLM is imported), so a full checkout and a partial tree holding
just the files named in FACTS both work. Each fact records the file it was read from and that file's commit: from
git where the tree is a checkout, else from SOURCES.json at the tree's root ({"path": {"commit": ..., "note": ...}}),
for trees assembled file by file.

    python tools/trtllm_contract.py TREE --release 1.2 --out tests/contracts/trtllm-1.2.json
    python tools/trtllm_contract.py TREE --release main --compare tests/contracts/trtllm-main.json

--compare prints every fact that differs from a committed contract (exit 1 if any): run it on a newer tree to see
what changed upstream. Fact kinds: signature (parameter names, kinds, order), init_attributes (how __init__ sets each
attribute: int(...), a call, a list, None...), enum (member values), env_default (the default of an environment
variable read with os.environ.get / os.getenv), none_returns (conditions under which a function returns None),
branches (the if/elif tests of a function, in order), call_args (the arguments of a call, as written),
assignments (a local's value, as written), class_fields (a dataclass's annotated fields and defaults).
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

FUSED = ("tensorrt_llm/_torch/moe/fused_moe/", "tensorrt_llm/_torch/modules/fused_moe/")  # main moved the package


def _in_fused(name: str) -> tuple:
    return tuple(prefix + name for prefix in FUSED)


@dataclass(frozen=True)
class Fact:
    id: str
    kind: str
    paths: tuple  # candidates, first found wins
    target: str  # Class.method, function, Class, or a module-level name
    names: tuple = ()  # attributes / locals / callee, per kind


INTERFACE, CONFIGURABLE, CREATE, QUANT, ACTIVATION = (_in_fused(n) for n in (
    "interface.py", "configurable_moe.py", "create_moe.py", "quantization.py", "activation.py"))
LAYERS_MOE = ("tensorrt_llm/layers/moe.py",)
BASE_WORKER = ("tensorrt_llm/executor/base_worker.py",)

FACTS = (
    Fact("moe.init.signature", "signature", INTERFACE, "MoE.__init__"),
    Fact("moe.init.attributes", "init_attributes", INTERFACE, "MoE",
         ("activation_type", "swiglu_limit_scalar", "layer_idx", "ep_size", "ep_rank", "tp_size", "use_dp",
          "cluster_size", "parallel_size", "intermediate_size_per_partition", "bias", "swiglu_alpha")),
    Fact("create_moe.configurable_moe_default", "env_default", CREATE, "create_moe", ("ENABLE_CONFIGURABLE_MOE",)),
    Fact("configurable_moe.init.attributes", "init_attributes", CONFIGURABLE, "ConfigurableMoE",
         ("comm", "enable_dwdp", "dwdp_manager", "scheduler", "backend")),
    Fact("configurable_moe.comm_strategy.none_when", "none_returns", CONFIGURABLE,
         "ConfigurableMoE._create_comm_strategy_auto"),
    Fact("configurable_moe.calculate_num_chunks.branches", "branches", CONFIGURABLE,
         "ConfigurableMoE.calculate_num_chunks"),
    Fact("configurable_moe.calculate_num_chunks.rows", "assignments", CONFIGURABLE,
         "ConfigurableMoE.calculate_num_chunks", ("num_rows",)),
    Fact("mixture_of_experts.forward.signature", "signature", LAYERS_MOE, "MixtureOfExperts.forward"),
    Fact("mixture_of_experts.forward_experts.signature", "signature", LAYERS_MOE, "MixtureOfExperts.forward_experts"),
    Fact("mixture_of_experts.forward.calls_forward_experts", "call_args", LAYERS_MOE, "MixtureOfExperts.forward",
         ("self.forward_experts",)),
    Fact("mixture_of_experts.init.attributes", "init_attributes", LAYERS_MOE, "MixtureOfExperts",
         ("num_experts", "top_k", "hidden_act", "hidden_size", "expert_inter_size", "moe_config", "mapping",
          "static_routing")),
    Fact("mixture_of_experts.init_experts.fc_out_size", "assignments", LAYERS_MOE, "MixtureOfExperts.init_experts",
         ("fc_out_size",)),
    Fact("moe_config.normalization_modes", "enum", LAYERS_MOE, "MoeConfig.ExpertScaleNormalizationMode"),
    Fact("quant.fp8_block_scales.shapes", "assignments", QUANT, "DeepSeekFP8BlockScalesFusedMoEMethod.create_weights",
         ("w3_w1_weight_shape", "w2_weight_shape", "w3_w1_weight_scaling_factor", "w2_weight_scaling_factor")),
    Fact("quant.w3_w1.order", "call_args", QUANT, "FusedMoEMethodBase.load_expert_w3_w1_weight", ("torch.cat",)),
    Fact("quant.setup_quant_scales.signature", "signature", QUANT, "FusedMoEMethodBase.setup_quant_scales"),
    Fact("base_worker.setup_engine.signature", "signature", BASE_WORKER, "BaseWorker.setup_engine"),
    Fact("base_worker.init.attributes", "init_attributes", BASE_WORKER, "BaseWorker", ("_engine", "rank", "llm_args")),
    Fact("moe_activation.swiglu.fields", "class_fields", ACTIVATION, "SwigluActivation"),  # main: activation objects
)


# ---- reading one tree -------------------------------------------------------------------------------------------

def _find(tree: ast.Module, target: str) -> Optional[ast.AST]:
    node: ast.AST = tree
    for part in target.split("."):
        body = getattr(node, "body", [])
        node = next((n for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                     and n.name == part), None)
        if node is None:
            return None
    return node


def signature(fn: ast.FunctionDef) -> List[Dict[str, object]]:
    a = fn.args
    out = []
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for arg, default in zip(positional, defaults):
        out.append({"name": arg.arg, "kind": "positional", "default": default is not None})
    if a.vararg:
        out.append({"name": a.vararg.arg, "kind": "var_positional", "default": False})
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        out.append({"name": arg.arg, "kind": "keyword_only", "default": default is not None})
    if a.kwarg:
        out.append({"name": a.kwarg.arg, "kind": "var_keyword", "default": False})
    return [p for p in out if p["name"] != "self"]


def value_type(node: ast.AST) -> str:
    """How an attribute is set, as a type where the expression says it, else the call or expression."""
    if isinstance(node, ast.Constant):
        return "None" if node.value is None else type(node.value).__name__
    if isinstance(node, (ast.List, ast.ListComp)) or (isinstance(node, ast.Call) and ast.unparse(node.func) == "list"):
        return "list"
    if isinstance(node, (ast.Tuple,)) or (isinstance(node, ast.Call) and ast.unparse(node.func) == "tuple"):
        return "tuple"
    if isinstance(node, ast.Call):
        func = ast.unparse(node.func)
        if func in ("int", "bool", "float", "str"):
            return func
        if func.endswith("Parameter"):
            return "Parameter"
        return f"call {func}"
    return f"expr {ast.unparse(node)}"


def init_attributes(cls: ast.ClassDef, names: Sequence[str]) -> Dict[str, object]:
    init = _find(ast.Module(body=cls.body, type_ignores=[]), "__init__")
    found: Dict[str, List[str]] = {}
    for node in ast.walk(init) if init is not None else ():
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) and node.value is not None else []
        for t in targets:
            pairs = [(t, node.value)]
            if isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple) and len(t.elts) == len(node.value.elts):
                pairs = list(zip(t.elts, node.value.elts))  # a, b = x, y
            for target, value in pairs:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                    found.setdefault(target.attr, []).append(value_type(value))
    return {n: ({"in_init": True, "set_as": found[n]} if n in found else {"in_init": False}) for n in names}


def enum_members(cls: ast.ClassDef) -> Dict[str, object]:
    return {t.id: n.value.value for n in cls.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
            for t in n.targets if isinstance(t, ast.Name)}


def env_default(fn: ast.AST, var: str) -> Optional[str]:
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv") and node.args \
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == var:
            return ast.unparse(node.args[1]) if len(node.args) > 1 else "None"
    return None


def none_returns(fn: ast.AST) -> List[str]:
    return [ast.unparse(n.test) for n in ast.walk(fn) if isinstance(n, ast.If) and any(
        isinstance(s, ast.Return) and (s.value is None or (isinstance(s.value, ast.Constant) and s.value.value is None))
        for s in n.body)]


def branches(fn: ast.AST) -> List[str]:
    out, node = [], next((n for n in fn.body if isinstance(n, ast.If)), None)
    while isinstance(node, ast.If):
        out.append(ast.unparse(node.test))
        node = node.orelse[0] if len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If) else None
    return out


def call_args(fn: ast.AST, callee: str) -> List[List[str]]:
    return [[ast.unparse(a) for a in n.args] + [f"{k.arg}={ast.unparse(k.value)}" for k in n.keywords]
            for n in ast.walk(fn) if isinstance(n, ast.Call) and ast.unparse(n.func) == callee]


def assignments(fn: ast.AST, names: Sequence[str]) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {n: [] for n in names}
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id in out:
                    out[t.id].append(ast.unparse(node.value))
    return out


def class_fields(cls: ast.ClassDef) -> Dict[str, Dict[str, object]]:
    return {n.target.id: {"annotation": ast.unparse(n.annotation),
                          "default": ast.unparse(n.value) if n.value is not None else None}
            for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def extract(fact: Fact, node: ast.AST):
    if fact.kind == "signature":
        return signature(node)
    if fact.kind == "init_attributes":
        return init_attributes(node, fact.names)
    if fact.kind == "enum":
        return enum_members(node)
    if fact.kind == "env_default":
        return env_default(node, fact.names[0])
    if fact.kind == "none_returns":
        return none_returns(node)
    if fact.kind == "branches":
        return branches(node)
    if fact.kind == "call_args":
        return call_args(node, fact.names[0])
    if fact.kind == "assignments":
        return assignments(node, fact.names)
    if fact.kind == "class_fields":
        return class_fields(node)
    raise ValueError(f"unknown fact kind {fact.kind}")


def _commit(root: Path, rel: str, sources: Dict[str, dict]) -> Dict[str, str]:
    if rel in sources:
        return {k: v for k, v in sources[rel].items() if k in ("commit", "note")}
    try:
        out = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%H", "--", rel], capture_output=True,
                             text=True, check=True).stdout.strip()
        return {"commit": out} if out else {"commit": "unknown"}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown"}


def read_tree(root: Path, release: str) -> Dict[str, object]:
    """The contract of the tree at root: {"release", "facts": {id: {"file", "commit", "kind", "value"}}}."""
    root = Path(root)
    sources = json.loads((root / "SOURCES.json").read_text()) if (root / "SOURCES.json").exists() else {}
    facts: Dict[str, object] = {}
    for fact in FACTS:
        rel = next((p for p in fact.paths if (root / p).exists()), None)
        node = _find(ast.parse((root / rel).read_text()), fact.target) if rel else None
        if node is None:
            facts[fact.id] = {"kind": fact.kind, "file": rel, "missing": f"{fact.target} not found"}
            continue
        facts[fact.id] = {"kind": fact.kind, "file": rel, **_commit(root, rel, sources), "target": fact.target,
                          "value": extract(fact, node)}
    return {"release": release, "facts": facts}


def differences(old: Dict[str, object], new: Dict[str, object]) -> List[str]:
    """One line per fact whose value, file or presence changed between two contracts."""
    lines, a, b = [], old["facts"], new["facts"]
    for fid in sorted(set(a) | set(b)):
        x, y = a.get(fid), b.get(fid)
        if x is None or y is None:
            lines.append(f"{fid}: {'added' if x is None else 'gone'}")
        elif x.get("value") != y.get("value") or x.get("missing") != y.get("missing") or x.get("file") != y.get("file"):
            lines.append(f"{fid}: {json.dumps(x.get('value', x.get('missing')))} ({x.get('file')}) -> "
                         f"{json.dumps(y.get('value', y.get('missing')))} ({y.get('file')})")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tree", type=Path, help="a TensorRT-LLM source tree (checkout, or the files FACTS names)")
    p.add_argument("--release", required=True, help="the label written into the contract (1.2, main...)")
    p.add_argument("--out", type=Path, help="write the contract JSON here")
    p.add_argument("--compare", type=Path, help="print the facts that differ from this contract; exit 1 if any")
    args = p.parse_args(argv)
    contract = read_tree(args.tree, args.release)
    missing = [f"{k}: {v['missing']} ({v['file']})" for k, v in contract["facts"].items() if "missing" in v]
    for line in missing:
        print(f"missing: {line}", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(contract, indent=1, sort_keys=True) + "\n")
    if args.compare:
        changed = differences(json.loads(args.compare.read_text()), contract)
        print("\n".join(changed) if changed else f"no differences from {args.compare}")
        return 1 if changed else 0
    if not args.out:
        print(json.dumps(contract, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
