"""The protocols clients speak -- native v1, KServe v2 over HTTP and gRPC, operations endpoints -- over
one :class:`~server.api.client.EngineClient`: codecs, schemas, outcomes, request-path warm-up."""
