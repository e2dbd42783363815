"""Device backends: where a candidate's latency is measured."""
