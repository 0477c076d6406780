"""Benchmarks that run on a serving host (numpy and onnxruntime only): the host's physical floors
(`floors`) and the runtime's one-row latency against them (`python -m runtime.bench.host`). Not imported
by `import runtime`."""
