"""Transport: uvicorn protocols that stamp arrival and read bodies in place, the hot-path router, body
limits, bearer-token auth, access logs and the offline docs page. Knows HTTP, not the model."""
