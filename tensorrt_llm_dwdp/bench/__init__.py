"""Measurements, side by side in one run. `trtllm-dwdp bench`: `command` (the launcher: checks, then mpirun),
`options` (its options and their checks), `job` (what one rank runs: every mode on the same model and requests),
`auto` (mode auto's decision), `capacity` (what a rank needs of the machine), `report` and `plots`.
`trtllm-dwdp bench kernels`: `kernels/`."""
