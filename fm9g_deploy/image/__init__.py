"""Serving images of a stack profile: render the build, build it offline, smoke-test, ship it."""
