"""The `dwdp:` options of a TensorRT-LLM deployment: where they come from, what they mean.

Sources (environment of each process):
  TRTLLM_DWDP_OPTIONS  path of a YAML file with a `dwdp:` section, normally the LLM API options
                       file the deployment already passes (`--extra_llm_api_options` / `--config`);
  TRTLLM_DWDP          "1" (defaults), "0" (off), or "key=value,key=value" (overrides the file).

Keys of the section: the DwdpConfig fields (group_size, num_groups, experts_per_rank,
num_prefetch_experts, placement, prefetch_depth, slice_bytes, memory_backend, pull_issue;
num_experts and weight_dtype only as cross-checks, they come from the model) plus
  enable   true/false (default true);
  mode     "dwdp" (default; warns when the performance model says DWDP cannot pay) or "auto"
           (enable DWDP only where the performance model predicts it beats DEP; it reads the served
           model's config as bench reads a checkpoint's: DeepSeek-V2/V3/R1 and Qwen3-MoE, any other
           is named in one line and DWDP stays off);
  isl      the workload the `auto` decision assumes, e.g. 8192 or normal:8192:0.2 (default:
           max_num_tokens);
  machine  the performance model's machine profile (h100, h200, b200, gb200; default: the GPU's).

TensorRT-LLM rejects unknown keys in the options file (BaseLlmArgs has extra="forbid" in
tensorrt_llm/llmapi/llm_args.py, read at 1.0, 1.2 and main), so the section must not reach it:
`strip_section` gives the file without it (the launcher writes that copy).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ...config import (MEMORY_BACKENDS, PULL_ISSUE_MODES, DwdpConfig, DwdpConfigError, Mode, check_fields,
                       parse_placement)

ENV_INLINE = "TRTLLM_DWDP"
ENV_FILE = "TRTLLM_DWDP_OPTIONS"
SECTION = "dwdp"
MODES = (Mode.DWDP.value, Mode.AUTO.value)  # what a deployment asks for (DEP is the engine without DWDP)

_INT_KEYS = ("group_size", "num_groups", "num_experts", "experts_per_rank", "num_prefetch_experts",
             "prefetch_depth", "slice_bytes")
_CHOICES = {"memory_backend": MEMORY_BACKENDS, "pull_issue": PULL_ISSUE_MODES, "mode": MODES}
_STR_KEYS = ("weight_dtype", "isl", "machine")
KEYS = ("enable", "placement", *_INT_KEYS, *_CHOICES, *_STR_KEYS)
_ON, _OFF = ("1", "true", "on", "yes"), ("0", "false", "off", "no", "")
_SIZE = re.compile(r"^\s*(-?\d+)\s*(b|kib|mib|gib|kb|mb|gb)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 1000, "mb": 10**6, "gb": 10**9}


@dataclass(frozen=True)
class TrtllmDwdpOptions:
    """The validated `dwdp:` section. `fields` holds the DwdpConfig fields the user gave."""

    enable: bool = True
    mode: str = "dwdp"
    isl: Optional[str] = None
    machine: Optional[str] = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    def config(self, *, num_experts: int, group_size: int, weight_dtype: str) -> DwdpConfig:
        """The DwdpConfig for a model of `num_experts` experts whose MoE layers TensorRT-LLM
        spread over `group_size` expert-parallel ranks."""
        given = dict(self.fields)
        for name, fact in (("num_experts", num_experts), ("weight_dtype", weight_dtype)):
            if name in given and given.pop(name) != fact:
                raise DwdpConfigError(f"dwdp.{name}", self.fields[name], f"the model has {fact}",
                                      f"remove dwdp.{name} from {self.source or 'the options'}")
        given.setdefault("group_size", group_size)
        return DwdpConfig(num_experts=num_experts, weight_dtype=weight_dtype, **given)


def _bad(key: str, value, problem: str, fix: str, source: str) -> DwdpConfigError:
    where = f" (in {source})" if source else ""
    return DwdpConfigError(f"dwdp.{key}", value, problem + where, fix)


def _coerce(key: str, value, source: str):
    if key == "enable":
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _ON + _OFF:
            return str(value).strip().lower() in _ON
        raise _bad(key, value, "must be true or false", "write enable: true or enable: false", source)
    if key in _INT_KEYS:
        if isinstance(value, str):
            m = _SIZE.match(value) if key == "slice_bytes" else re.match(r"^\s*(-?\d+)\s*$", value)
            if m:
                return int(m.group(1)) * (_UNITS[(m.group(2) or "").lower() or None] if key == "slice_bytes" else 1)
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        unit = " (bytes, or e.g. 32MiB)" if key == "slice_bytes" else ""
        raise _bad(key, value, f"must be an integer{unit}", f"write {key}: <integer>", source)
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise _bad(key, value, "is not a known choice", f"use one of {', '.join(_CHOICES[key])}", source)
        return value
    if key == "placement":
        try:
            if isinstance(value, str):
                return parse_placement(value)
            return tuple(tuple(int(e) for e in rank) for rank in value)
        except (TypeError, ValueError):
            raise _bad(key, value, "is not a list of expert-id lists",
                       'write placement: "0-3;4-7" or [[0, 1, 2, 3], [4, 5, 6, 7]]', source) from None
    return str(value)


def parse_section(section, source: str = "") -> TrtllmDwdpOptions:
    """Validate a `dwdp:` mapping (None or {} means: enabled, defaults)."""
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise DwdpConfigError("dwdp", section, f"must be a mapping of options{f' (in {source})' if source else ''}",
                              "write `dwdp:` followed by indented key: value lines, or `dwdp: {}` for defaults")
    values: Dict[str, Any] = {}
    for key, value in section.items():
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean {close[0]!r}" if close else f"known keys: {', '.join(KEYS)}"
            raise _bad(str(key), value, "is not a DWDP option", hint, source)
        values[key] = _coerce(key, value, source)
    adapter = {k: values.pop(k) for k in ("enable", "mode", "isl", "machine") if k in values}
    try:  # values too, not only names and types: the same rules DwdpConfig applies once the model is known
        check_fields(values)
    except DwdpConfigError as e:
        raise _bad(e.option, e.value, e.problem, e.fix, source) from None
    if "machine" in adapter:
        from ...sim.machines import MACHINES
        if adapter["machine"] not in MACHINES:
            raise _bad("machine", adapter["machine"], "is not a machine profile of the performance model",
                       f"use one of {', '.join(MACHINES)}, or leave it unset (the GPU's own)", source)
    if "isl" in adapter:
        from ...workloads.requests import parse_isl
        try:
            parse_isl(adapter["isl"])
        except ValueError:
            raise _bad("isl", adapter["isl"], "is not a workload the performance model understands",
                       "a fixed length such as 8192, or KIND:MEAN:CV such as normal:8192:0.2", source) from None
    return TrtllmDwdpOptions(fields=values, source=source, **adapter)


# Commas separate options, but placement uses them inside a value ("0-3,8;4-7"): split only
# before the next "key=".
_INLINE_SPLIT = re.compile(r",(?=\s*[A-Za-z_]\w*\s*=)")


def parse_inline(text: str) -> Dict[str, Any]:
    """TRTLLM_DWDP's value as a `dwdp:` mapping: "1" -> {}, "0" -> {enable: false}, "k=v,k=v"."""
    t = text.strip()
    if t.lower() in _ON:
        return {}
    if t.lower() in _OFF:
        return {"enable": False}
    out = {}
    for item in _INLINE_SPLIT.split(t):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise DwdpConfigError(ENV_INLINE, text, f"{item.strip()!r} is not key=value",
                                  f"write e.g. {ENV_INLINE}=group_size=4,prefetch_depth=2, or {ENV_INLINE}=1")
        out[key.strip()] = value.strip()
    return out


def read_yaml(path: str, option: str = ENV_FILE):
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - pyyaml is a dependency
        raise RuntimeError("reading DWDP options needs PyYAML: pip install pyyaml") from e
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise DwdpConfigError(option, path, f"cannot be read ({e.strerror})",
                              "point it at the options YAML") from None
    except yaml.YAMLError as e:
        raise DwdpConfigError(option, path, f"is not valid YAML ({str(e).splitlines()[0]})",
                              "fix the YAML syntax") from None


def strip_section(doc) -> Tuple[Any, Optional[Any], bool]:
    """(the document without its top-level `dwdp:` key, the section, whether it had one)."""
    if not isinstance(doc, Mapping) or SECTION not in doc:
        return doc, None, False
    rest = {k: v for k, v in doc.items() if k != SECTION}
    return rest, doc[SECTION], True


def load_options(environ: Optional[Mapping[str, str]] = None) -> Optional[TrtllmDwdpOptions]:
    """The options this process was started with, or None when neither variable is set."""
    env = os.environ if environ is None else environ
    path, inline = env.get(ENV_FILE), env.get(ENV_INLINE)
    if path is None and inline is None:
        return None
    section, sources = {}, []
    if path:
        doc = read_yaml(path)
        _, found, has = strip_section(doc)
        if not has:
            raise DwdpConfigError(ENV_FILE, path, "the file has no top-level `dwdp:` section",
                                  f"add `dwdp: {{}}` (defaults) to it, or unset {ENV_FILE}")
        if found is not None and not isinstance(found, Mapping):
            parse_section(found, path)  # raises: the section must be a mapping
        section = dict(found or {})
        sources.append(path)
    if inline is not None:
        section = dict(section, **parse_inline(inline))
        sources.append(f"{ENV_INLINE}={inline}")
    return parse_section(section, " + ".join(sources))
