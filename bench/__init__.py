"""attnserve benchmarks: one command builds the model repositories, measures the in-process
ONNX Runtime ceiling, starts the server (and a peer), drives it with real clients and writes
results (JSON, Markdown, PNG). See bench/README.md.

Nothing is imported here: ``bench.peer.*_runtime``/``*_model`` are imported by the peers in their own virtual
environments, which have neither grpc stubs nor matplotlib.
"""
