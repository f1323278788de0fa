"""KServe v2 (Open Inference Protocol) over HTTP/REST, and the attnserve API's REST routes.

A second transport beside gRPC, on the same event loop and the same data plane: see server.py.
"""
