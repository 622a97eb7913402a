"""Artifacts: locks of exact files per stack profile, the content-addressed cache, the mirror.

- lock.py: the lock file format (locks/<profile>.json) and install sets.
- resolve.py: turns a profile into locked files with pip's own resolver.
- cache.py: the content-addressed store (sha256/<hash>/<filename>), model pins, operator wheels.
- download.py: one resumable, hash-checked HTTP download.
- fetch.py: brings every file of a lock (and a model's tarball) into the cache.
- publish.py: the per-profile pip view inside the cache (requirements.txt + index.html).
- verify.py: re-hashes the cache against the lock and the pins.
- serve.py: serves the cache over HTTP with Range support.
"""
