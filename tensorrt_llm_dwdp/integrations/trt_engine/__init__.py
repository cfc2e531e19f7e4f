"""The TensorRT engine plugin (DwdpMoe), found from here.

Python:
  * `build`: a TensorRT-LLM engine build emits DwdpMoe in place of its MixtureOfExperts plugin;
  * `load`: before an engine is deserialised, DwdpHooks are set up and the C++ context registered;
  * `context`: the C++ DwdpContext built from DwdpHooks' real shards (the hooks lend it their slot ring).
C++: `cpp/plugin/dwdp_moe_plugin.{h,cpp}` (the plugin), `cpp/src/context.cpp` (the context registry),
`cpp/src/slot_ring.cpp` (the slot ring; `prefetch/prefetcher.py` is its Python twin, and `tests/test_slot_ring.py`
drives both with the same call sequences), `cpp/src/moe_layer.cu` and the kernels beside it.
Build: `setup.py` links `libdwdp_trt_plugin.so` where TensorRT headers are found (TENSORRT_ROOT, .trt/include, the
NGC image's paths). Tests: `tests/test_trt_plugin.py` (with `tests/cpp/plugin_harness.cpp`),
`tests/test_trtllm_engine_flow.py`.
"""
