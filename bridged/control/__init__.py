"""The daemon's control API: HTTP+JSON on a unix socket (mode 0600 in a 0700 folder).

- :mod:`.models`: pure: request bodies → specs, errors ↔ HTTP statuses (tested without sockets);
- :mod:`.api`: the server side, inside the daemon (on :mod:`.httpserver`, our own HTTP/1.1);
- :mod:`.client`: what the CLI and VS Code tasks use; starts the daemon when it is not running.

Resources (all under ``/v1``): ``GET status``; ``POST bridges`` / ``DELETE bridges/{name}``;
``POST forwards`` / ``DELETE forwards/{name}``; ``POST intercepts`` /
``DELETE intercepts/{name}``; ``POST shutdown``. Errors are ``{"error": {code, message, hint}}``.
"""
