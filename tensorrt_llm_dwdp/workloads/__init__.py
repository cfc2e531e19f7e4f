"""What a run is given, shared by the runtime, the bench and the simulator, torch-free: model presets
(`presets`), the synthetic routers' expert popularity (`popularity`), request streams and the one rule that packs
them into iterations (`requests`)."""
