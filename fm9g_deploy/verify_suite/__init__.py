"""The checks `fm9g-deploy verify` runs against a fleet: a pytest-testinfra suite.

`fm9g-deploy verify` writes the deployment's facts (facts.py) to a private file and runs pytest
over this package; the suite reads the hosts over SSH through the Ansible inventory and calls
the API through each host's gateway from the control node.
"""
