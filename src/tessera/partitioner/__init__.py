"""`tessera partitioner`: the cluster controller that gives pending pods their MIG slices.

It watches pods the scheduler could not place for lack of a `nvidia.com/mig-<profile>`,
plans exact layouts for opted-in nodes (`tessera.dev/mig.mode=partitioned`) with
`tessera.placement`, writes them through the agent's layout annotation, and nominates each
pod to its node once the node advertises the new slice. Layers: imports placement and kube
only::

    settings    flags, bounded
    pending     which pods wait for a MIG slice, as the planner's PodRequests (pure)
    snapshot    opted-in nodes as the planner's Snapshot, and which have settled (pure)
    batching    the idle window and the cap that close a batch (pure)
    messages    the words of Events (pure)
    render      the dry run's table and slice pictures (pure)
    metrics     Prometheus metrics
    controller  the loop: mirrors -> batch -> plan -> write -> nominate
    dryrun      the plan it would make now, from the cluster or a file, changing nothing
    service     the process: credentials, metrics endpoint, leader election, signals
"""
