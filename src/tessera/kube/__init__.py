"""The one seam to the Kubernetes API: the agent's own Node (watch, patch), Events, pods;
the partitioner's cluster-wide mirrors, writes and leader election.

Built on lightkube (see `tessera.kube.node` for why). It imports nothing of Tessera's but
`tessera.errors`; the agent sees only the frozen views and `NodeClient`::

    views     NodeView, PodView: what the agent reads of a Node and a Pod
    node      NodeClient: get, watch, patch, event, pods for one node, with retries
    retry     RetryPolicy, KubeUnavailable (temporary), KubeRejected (permanent)
    events    when a repeated Event is counted on the last one instead of created anew
    config    kubeconfig or in-cluster credentials, and the lightkube client built on them
    testing   FakeApiServer: kube-apiserver's HTTP for what the agent uses, for tests
    cluster   ClusterClient, Mirror: the partitioner's pods and nodes, nominations, Events
    lease     LeaderElector: one leader among replicas on a coordination.k8s.io Lease
    layoutstatus  the node protocol between the agent and the partitioner (pure)
    listfile  nodes and pods from a `kubectl get -o json` file, for a dry run
"""

from tessera.kube.node import NodeClient
from tessera.kube.retry import KubeRejected, KubeUnavailable, RetryPolicy
from tessera.kube.views import NodeView, PodView

__all__ = ["KubeRejected", "KubeUnavailable", "NodeClient", "NodeView", "PodView", "RetryPolicy"]
