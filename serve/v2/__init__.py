"""The Open Inference Protocol (KServe v2, Triton's HTTP/gRPC protocol) over the same engine."""
