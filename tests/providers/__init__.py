"""Small local servers that stand in for SaaS providers in the tests.

Each follows its provider's documented protocol (endpoints, status codes, auth, rate limits, the
answer to a second delete) and keeps its state in memory, so a test can ask it what still
exists. They are stand-ins: the real providers are not reachable from CI.
"""
