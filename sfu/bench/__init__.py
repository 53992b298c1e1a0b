"""``sfu bench``: load generator, C floor and report for the forwarding engine (docs/benchmarks.md)."""
