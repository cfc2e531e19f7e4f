"""The `trtllm-dwdp` command line: `main` (the subcommands), `usage` (bad input as one line, exit code 2),
`mpirun` (multi-rank launches on one node), `doctor`. The tools themselves live in `bench/`, `sim/`, `verify/` and
`integrations/trtllm/launch.py`; this package parses, checks and starts them, and imports no torch."""
