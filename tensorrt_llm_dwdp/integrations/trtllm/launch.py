"""`trtllm-dwdp launch [--dry-run] -- <command ...>`: a TensorRT-LLM launch command, with DWDP.

Runs inside every MPI rank, in front of the command the deployment already uses:
  mpirun -n 8 trtllm-dwdp launch -- trtllm-llmapi-launch trtllm-serve MODEL --config opts.yaml
  mpirun -n 16 trtllm-dwdp launch -- trtllm-serve disaggregated_mpi_worker -c disagg.yaml
It finds the options file of the command (--extra_llm_api_options / --config; -c / --config_file of
the disaggregated MPI worker), validates its `dwdp:` section, writes a copy without it (TensorRT-LLM
rejects unknown keys) and points the command at the copy, sets TRTLLM_DWDP_OPTIONS for the
processes the command starts (their .pth hook installs the adapter), then execs the command.
In the disaggregated worker the `dwdp:` section belongs under context_servers, and only the ranks
of context servers get it: TensorRT-LLM gives the first ranks to the context instances, in order.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ...commands.usage import fail
from ...config import DwdpConfigError
from .options import ENV_FILE, ENV_INLINE, SECTION, load_options, parse_section, read_yaml, strip_section

OPTION_FLAGS = ("--extra_llm_api_options", "--config")
DISAGG_WORKER = "disaggregated_mpi_worker"
DISAGG_FLAGS = ("-c", "--config_file")
PROG = "trtllm-dwdp launch"
RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")


@dataclass(frozen=True)
class Launch:
    argv: List[str]
    env: Dict[str, str]
    notes: Tuple[str, ...]
    written: Tuple[str, ...] = ()  # the option copies prepare() wrote (a dry run removes them)


def find_flag(argv: Sequence[str], flags: Sequence[str]) -> Optional[Tuple[int, str]]:
    """(index, path) of the last `--flag path` / `--flag=path` in argv (the one a CLI parser keeps)."""
    hit = None
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in flags and eq:
            hit = (i, value)
        elif arg in flags and i + 1 < len(argv):
            hit = (i + 1, argv[i + 1])
    return hit


def _flag_name(argv: Sequence[str], index: int, flags: Sequence[str]) -> str:
    """The flag that gave argv[index] (`--config path` or `--config=path`)."""
    name = argv[index].partition("=")[0]
    if name in flags:
        return name
    return argv[index - 1] if index and argv[index - 1] in flags else flags[0]


def world_rank(environ: Mapping[str, str]) -> int:
    for var in RANK_VARS:
        if environ.get(var, "").isdigit():
            return int(environ[var])
    raise DwdpConfigError("launch", DISAGG_WORKER, "cannot tell this process's MPI rank "
                          f"(none of {', '.join(RANK_VARS)} is set)", "start it with mpirun or srun")


def _write_yaml(doc, tag: str, written: List[str]) -> str:
    import yaml
    fd, path = tempfile.mkstemp(prefix=f"trtllm-dwdp-{tag}-", suffix=".yaml")
    written.append(path)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


# Options DWDP servers must have off: DWDP MoE layers wait on prefetch events (no CUDA graph capture),
# and TensorRT-LLM compiles the model before DWDP attaches (Dynamo would trace its hooks).
OFF_KEYS = {"cuda_graph_config": "DWDP MoE layers are not captured in CUDA graphs",
            "torch_compile_config": "DWDP MoE layers are not traced by torch.compile"}


def _serving_overrides(server: dict, where: str, notes: List[str]) -> dict:
    """Require OFF_KEYS null in a DWDP server's options (added where absent)."""
    for key, why in OFF_KEYS.items():
        if key not in server:
            notes.append(f"{where}: added {key}: null ({why})")
            server = dict(server, **{key: None})
        elif server[key] is not None:
            raise DwdpConfigError(key, server[key], f"{where} enables it, but {why}", f"set {key}: null")
    return server


def _move_to_generation(doc: dict, notes: List[str]) -> dict:
    """TensorRT-LLM's disaggregated config refuses a key set both at the top level and under a server
    ("specified both"); a top-level OFF_KEYS value moves to generation_servers, so context_servers can
    set it null."""
    gen = dict(doc.get("generation_servers") or {})
    moved = [k for k in OFF_KEYS if doc.get(k) is not None]
    for key in moved:
        if key in gen:
            raise DwdpConfigError(key, doc[key], "is set at the top level and under generation_servers",
                                  f"keep one {key}, under generation_servers")
        gen[key] = doc[key]
        notes.append(f"moved the top-level {key} under generation_servers (context servers run DWDP)")
    if not moved:
        return doc
    out = {k: v for k, v in doc.items() if k not in moved}
    return dict(out, generation_servers=gen)


def _disagg(argv: List[str], hit: Tuple[int, str], env: Dict[str, str], notes: List[str], written: List[str]) -> None:
    index, path = hit
    rank = world_rank(env)
    doc = read_yaml(path, argv[index - 1] if index and argv[index - 1] in DISAGG_FLAGS else DISAGG_FLAGS[0])
    if not isinstance(doc, dict):
        raise DwdpConfigError(DISAGG_FLAGS[0], path, "is not a disaggregated-serving YAML mapping", "check the file")
    ctx, gen = dict(doc.get("context_servers") or {}), doc.get("generation_servers") or {}
    for where, block in (("top level", doc), ("generation_servers", gen)):
        if SECTION in block:
            raise DwdpConfigError(SECTION, block[SECTION], f"found at the {where} of {path}; DWDP serves "
                                  "context servers", "move the dwdp: section under context_servers")
    ctx, section, has = strip_section(ctx)
    if not has:
        raise DwdpConfigError(SECTION, None, f"{path} has no dwdp: section under context_servers",
                              "add `dwdp: {}` (defaults) under context_servers")
    parse_section(section, f"{path} context_servers")
    doc = _move_to_generation(doc, notes)
    ctx = _serving_overrides(ctx, "context_servers", notes)
    size = 1
    # NOTE: 1.2's disaggregated worker sizes an instance as tensor x pipeline parallel; it does not
    # count context_parallel_size.
    for key in ("tensor_parallel_size", "pipeline_parallel_size"):
        size *= int(ctx.get(key, doc.get(key, 1)))
    ctx_ranks = int(ctx.get("num_instances", 1)) * size
    argv[index] = _swap(argv[index], path, _write_yaml(dict(doc, context_servers=ctx), "disagg", written))
    if rank < ctx_ranks:
        env[ENV_FILE] = _write_yaml({SECTION: section}, f"rank{rank}", written)
        notes.append(f"rank {rank}: context server, DWDP on")
    else:
        env.pop(ENV_FILE, None)
        env.pop(ENV_INLINE, None)
        notes.append(f"rank {rank}: generation server, DWDP off")


def _swap(arg: str, old: str, new: str) -> str:
    return arg[: len(arg) - len(old)] + new if arg.endswith("=" + old) else new


def prepare(command: Sequence[str], environ: Mapping[str, str]) -> Launch:
    """The command and environment to exec; writes the filtered option copies. Raises DwdpConfigError."""
    argv, env, notes, written = list(command), dict(environ), [], []
    if not argv:
        raise DwdpConfigError("launch", "", "no command given", "write: trtllm-dwdp launch -- <command ...>")
    if DISAGG_WORKER in argv:
        hit = find_flag(argv[argv.index(DISAGG_WORKER):], DISAGG_FLAGS)
        if hit is None:
            raise DwdpConfigError("launch", DISAGG_WORKER, "has no -c/--config_file", "pass the disaggregated YAML")
        _disagg(argv, (hit[0] + argv.index(DISAGG_WORKER), hit[1]), env, notes, written)
    else:
        hit = find_flag(argv, OPTION_FLAGS)
        doc = read_yaml(hit[1], _flag_name(argv, hit[0], OPTION_FLAGS)) if hit else None
        rest, section, has = strip_section(doc)
        if has:
            parse_section(section, hit[1])
            argv[hit[0]] = _swap(argv[hit[0]], hit[1], _write_yaml(_serving_overrides(rest, hit[1], notes), "options",
                                                                   written))
            env[ENV_FILE] = os.path.abspath(hit[1])
        elif ENV_INLINE not in env and ENV_FILE not in env:
            where = hit[1] if hit else "the command (no --extra_llm_api_options / --config)"
            raise DwdpConfigError(SECTION, None, f"{where} has no dwdp: section and {ENV_INLINE} is unset",
                                  f"add `dwdp: {{}}` to the options file, or set {ENV_INLINE}=1")
    try:
        options = load_options(env)  # every rank fails here, before launch, on a bad option
    except DwdpConfigError:
        _remove(written)
        raise
    if options is not None and not options.enable:
        notes.append("dwdp.enable is false: TensorRT-LLM runs without DWDP")
    return Launch(argv, env, tuple(notes), tuple(written))


def _remove(paths: Sequence[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def main(args: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if args is None else list(args)
    if {"-h", "--help"} & set(args[: args.index("--")] if "--" in args else args):
        print(__doc__)
        return 0
    dry = "--dry-run" in args[: args.index("--")] if "--" in args else "--dry-run" in args
    command = args[args.index("--") + 1:] if "--" in args else [a for a in args if a != "--dry-run"]
    own = [a for a in args[: args.index("--")] if a != "--dry-run"] if "--" in args else []
    if own:
        return fail(PROG, f"unrecognized option {own[0]!r} before '--'. Fix: only --dry-run goes there; "
                          "the command follows '--'.")
    try:
        launch = prepare(command, os.environ)
    except DwdpConfigError as e:
        return fail(PROG, e)
    for note in launch.notes:
        print(f"{PROG}: {note}", file=sys.stderr)
    if dry:
        _remove(launch.written)  # nothing runs: the copies it would read go too, and are not named as files
        shown = {path: f"<{os.path.basename(path).rsplit('-', 1)[0]} copy, written at launch>" for path in launch.written}

        def show(text: str) -> str:
            for path, label in shown.items():
                text = text.replace(path, label)
            return text
        print(" ".join(show(a) for a in launch.argv))
        print(f"{ENV_FILE}={show(launch.env.get(ENV_FILE, ''))}")
        return 0
    try:
        os.execvpe(launch.argv[0], launch.argv, launch.env)
    except OSError as e:
        print(f"{PROG}: error: cannot run {launch.argv[0]!r}: {e.strerror}", file=sys.stderr)
        return 127
