"""Tests on Ray clusters of ``ray start`` nodes, each in a network namespace (``bench/local_cluster.py``).

They live apart from ``tests/integration`` so that pytest runs them first ("cluster" sorts before "gpu" and
"integration"), before the integration tests' session Ray instance starts: on a 2-core machine a cluster of
three nodes beside that instance's idle apps timed out (GCS calls past their deadline, proxies not ready).
"""
