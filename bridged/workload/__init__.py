"""A workload's environment on the laptop: the pure rules, with no I/O.

- :mod:`.kubelet`: how ``env``/``envFrom``/``valueFrom`` and ``$(VAR)`` build a container's
  environment, and the Service variables (:func:`~.kubelet.resolve_env`);
- :mod:`.downward`: the downward API (pod fields, resource values, quantities);
- :mod:`.rewrites`: Service addresses in that environment made the laptop's forwards, and the
  names a pod uses for a Service (the proxy's name rules of issue 13 go beside them);
- :mod:`.formats`: the environment as a ``dotenv``, ``json`` or ``shell`` file;
- :mod:`.result`: what they share (:class:`~.result.EnvResult`).

Pure: no asyncio, aiohttp, asyncssh or kubernetes imports (an import-linter contract checks
it); :mod:`bridged.kube.env` reads the objects from the API and writes the file.
"""
