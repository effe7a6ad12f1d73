"""One router per API surface: native v1, KServe v2 (Open Inference Protocol), operations."""
