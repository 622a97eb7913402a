"""The local sandbox: containers that behave like real hosts (systemd, sshd), for rehearsal and tests."""
