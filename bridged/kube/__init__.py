"""Everything that talks to the Kubernetes API; the only package importing kubernetes_asyncio.

- :mod:`.client`: kubeconfig resolution as kubectl does it, one API client per target, errors
  translated into :class:`~bridged.errors.KubeError` at one seam;
- :mod:`.portforward`: opening the pod port-forward websocket the ``kube`` carrier runs over.
"""
