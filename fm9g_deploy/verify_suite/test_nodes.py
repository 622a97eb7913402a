"""A replica over several hosts: every planned node joined the head's running engine and serves with it.

Each node's supervisor publishes its state on the hosts' network (fm9g_replica_nodes.py); the checks
read it on the hosts themselves. The head's real request is test_api's, through the head's gateway;
GPUs per node are test_gpu's. Skipped for replicas of one host."""

from __future__ import annotations

import pytest

from fm9g_deploy.verify_suite.support import expect, node_status

pytestmark = pytest.mark.journal("replicas")


@pytest.fixture
def node(replica) -> dict:
    if not replica.get("node"):
        pytest.skip("a replica of one host")
    return replica["node"]


def test_node_serves_with_its_head(host, node, replica):
    """node serves with its head"""
    status, problem = node_status(host, node["status_url"])
    expect(status is not None, f"node rank {node['rank']}'s supervisor does not answer {node['status_url']}: {problem}")
    expect(status.get("state") == "serving",
           f"node rank {node['rank']} of replica {replica['index']} is {status.get('state')}"
           + (f": {status['last_cause']}" if status.get("last_cause") else ""))


def test_every_node_joined_the_heads_engine(host, node, replica):
    """every node joined the head's engine"""
    if node["rank"] != 0:
        pytest.skip("checked at the head")
    head, problem = node_status(host, node["status_url"])
    expect(head is not None and head.get("generation"),
           f"the head's supervisor does not say which engine runs ({node['status_url']}: {problem or head})")
    missing = []
    for rank, url in enumerate(node["status_urls"][1:], start=1):
        status, why = node_status(host, url)
        if status is None:
            missing.append(f"rank {rank} ({node['hosts'][rank]}): unreachable from the head ({why})")
        elif status.get("joined") != head["generation"]:
            missing.append(f"rank {rank} ({node['hosts'][rank]}): {status.get('state')}, joined "
                           f"{status.get('joined') or 'no engine'}, not the head's {head['generation']}")
    expect(not missing, f"not every planned node joined the head's engine: {'; '.join(missing)}")
