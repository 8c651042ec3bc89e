"""Everything that talks to the Kubernetes API; the only package importing kubernetes_asyncio.

- :mod:`.client`: kubeconfig resolution as kubectl does it, one API client per target, errors
  translated into :class:`~bridged.errors.KubeError` at one seam;
- :mod:`.portforward`: opening the pod port-forward websocket the ``kube`` carrier runs over;
- :mod:`.manifests` (pure), :mod:`.relay`, :mod:`.hostkey`: the relay's objects, deploying
  and upgrading it, its host key kept in a Secret and published for pinning;
- :mod:`.discovery`: Services and their ports;
- :mod:`.env`, :mod:`.files`: a workload's environment and config files as the kubelet makes
  them (pure resolution, then the I/O that reads what it references).
"""
